"""Learning curves of a study with training sizes (``train_sizes``): each model's scores
against the number of training images, the smallest size at which each model reaches a
score, the sizes at which two models' paired difference excludes 0, and the hardware side of
the budget (score against parameters and against measured int8 CPU latency, with the Pareto
front per size).

A study with one training size has no learning curve: :func:`learning_curve` returns None
and the report shows no such section.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, cast

import numpy as np

from lightlayers import csvsafe
from lightlayers.data.subsets import train_images, train_size
from lightlayers.report.load import Group, ReportError, RunData
from lightlayers.report.stats import Summary, pareto_front, summarize

CURVE_METRICS = ("accuracy", "balanced_accuracy", "auc")
BUDGET_METRICS = ("accuracy", "auc")
NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "AUC"}
# CPU latency of the int8 ONNX model at batch 1 (lightlayers.deploy.bench, `--deployment`).
LATENCY = "ort_int8_latency_ms"
# Without --reach, the levels are these shares of the best mean at the largest size.
DEFAULT_SHARES = (0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Point:
    """One model at one training size: its scores over the seeds."""

    label: str
    model: str
    protocol: str
    size: str  # the size's label; "all" for the whole training split
    images: int | None
    seeds: tuple[int, ...]
    stats: dict[str, Summary]
    params: float | None
    latency_ms: float | None


@dataclass(frozen=True)
class Reach:
    """The smallest training size at which each model's mean ``metric`` reaches each level."""

    metric: str
    targets: tuple[float, ...]
    given: bool  # chosen with --reach, else derived from the best score
    smallest: dict[str, tuple[str | None, ...]]  # model label -> size per target (None: never)


@dataclass(frozen=True)
class Crossing:
    """Two models' paired difference of ``metric`` at each size (model A - model B)."""

    model_a: str
    model_b: str
    metric: str
    # (size, images, difference, 95% low, 95% high) per size, smallest first.
    per_size: tuple[tuple[str, int | None, float, float, float], ...]

    def excluding_zero(self) -> list[str]:
        return [s for s, _, _, lo, hi in self.per_size if lo > 0 or hi < 0]

    def sentence(self) -> str:
        a_wins = [s for s, _, _, lo, _ in self.per_size if lo > 0]
        b_wins = [s for s, _, _, _, hi in self.per_size if hi < 0]
        parts = []
        if a_wins:
            parts.append(f"{self.model_a} better at {', '.join(a_wins)}")
        if b_wins:
            parts.append(f"{self.model_b} better at {', '.join(b_wins)}")
        if not parts:
            return "no size separates them"
        return "; ".join(parts) + ("; the order flips (a crossover)" if a_wins and b_wins
                                   else "")


@dataclass(frozen=True)
class LearningCurve:
    sizes: tuple[tuple[str, int | None], ...]  # (label, training images), smallest first
    points: tuple[Point, ...]
    reach: Reach
    crossings: tuple[Crossing, ...]
    latency: bool  # some trial measured the int8 CPU latency
    notes: tuple[str, ...] = ()
    n_boot: int = 0
    labels: tuple[str, ...] = field(default=())  # models in the study's order
    tuned: bool = False  # settings from `lightlayers tune`, tuned on the whole training split


def parse_reach(spec: str | None) -> tuple[str, tuple[float, ...]]:
    """``--reach METRIC[:X,X...]`` as (metric, levels); no levels: derived from the data."""
    if spec is None:
        return "accuracy", ()
    metric, _, levels = spec.partition(":")
    metric = metric.strip()
    if metric not in CURVE_METRICS:
        raise ReportError(f"--reach {spec}: the metric must be one of "
                          f"{', '.join(CURVE_METRICS)}, e.g. --reach accuracy:0.9,0.95")
    targets = []
    for text in (t for t in levels.split(",") if t.strip()):
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not 0 < x <= 1:
            raise ReportError(f"--reach {spec}: {text.strip()!r} is not a score in (0, 1]; "
                              "give e.g. --reach accuracy:0.9,0.95")
        targets.append(x)
    return metric, tuple(sorted(set(targets)))


def learning_curve(run: RunData, reach: str | None = None) -> LearningCurve | None:
    """The learning curve of ``run`` (see the module docstring); None with one size."""
    if len({train_size(t) for t in run.curve}) < 2:
        return None
    several = len({t["protocol"] for t in run.curve}) > 1
    full_images = ((run.meta.get("data") or {}).get("split_sizes") or {}).get("train")
    by_point: dict[tuple[str, str], list[dict[str, Any]]] = {}
    labels: dict[str, tuple[str, str]] = {}
    for t in run.curve:
        label = f"{t['model']} [{t['protocol']}]" if several else t["model"]
        labels.setdefault(label, (t["model"], t["protocol"]))
        by_point.setdefault((label, train_size(t) or "all"), []).append(t)
    images: dict[str, list[int]] = {}
    for (_, size), ts in by_point.items():
        images.setdefault(size, []).extend(
            int(n) for t in ts if (n := train_images(t) or (full_images if size == "all"
                                                             else None)) is not None)
    size_images = {s: (int(np.median(v)) if v else None) for s, v in images.items()}
    sizes = tuple(sorted(size_images.items(),
                         key=lambda kv: (kv[1] is None, kv[1] or 0, kv[0])))
    order = {s: i for i, (s, _) in enumerate(sizes)}
    points = []
    for (label, size), ts in sorted(by_point.items(),
                                    key=lambda kv: (list(labels).index(kv[0][0]),
                                                    order[kv[0][1]])):
        model, protocol = labels[label]
        stats = {m: _clip(summarize(t.get(m) for t in ts)) for m in CURVE_METRICS}
        points.append(Point(label, model, protocol, size, size_images[size],
                            tuple(sorted(t["seed"] for t in ts)), stats,
                            summarize(t.get("params_total") for t in ts).mean,
                            summarize(t.get(LATENCY) for t in ts).mean))
    metric, targets = parse_reach(reach)
    crossings, notes, n_boot = _crossings(run, sizes, labels, metric, several)
    latency = any(p.latency_ms is not None for p in points)
    if not latency:
        notes.append("The int8 CPU latency was not measured (`lightlayers run --deployment` "
                     "measures it): the budget figures plot against parameters only.")
    tuned = (run.meta.get("settings_source") or {}).get("kind") == "tuned"
    return LearningCurve(sizes, tuple(points), _reach(points, sizes, metric, targets),
                         crossings, latency, tuple(notes), n_boot, tuple(labels), tuned)


def _clip(s: Summary) -> Summary:
    if s.ci_low is None or s.ci_high is None:
        return s
    from dataclasses import replace

    return replace(s, ci_low=max(0.0, s.ci_low), ci_high=min(1.0, s.ci_high))


def _reach(points: Sequence[Point], sizes: Sequence[tuple[str, int | None]], metric: str,
           targets: tuple[float, ...]) -> Reach:
    given = bool(targets)
    if not given:
        largest = sizes[-1][0]
        best = max((m for p in points
                    if p.size == largest and (m := p.stats[metric].mean) is not None),
                   default=None)
        # Rounded down to 0.01, so "reaches 0.86" reads as a plain number.
        targets = tuple(sorted({math.floor(best * f * 100) / 100 for f in DEFAULT_SHARES}
                               )) if best else ()
    rank = {s: i for i, (s, _) in enumerate(sizes)}
    smallest: dict[str, tuple[str | None, ...]] = {}
    for label in dict.fromkeys(p.label for p in points):
        mine = sorted((p for p in points if p.label == label), key=lambda p: rank[p.size])
        smallest[label] = tuple(
            next((p.size for p in mine if (m := p.stats[metric].mean) is not None
                  and m >= x), None) for x in targets)
    return Reach(metric, targets, given, smallest)


def _crossings(run: RunData, sizes: Sequence[tuple[str, int | None]],
               labels: dict[str, tuple[str, str]], metric: str, several: bool
               ) -> tuple[tuple[Crossing, ...], list[str], int]:
    """Per pair of models, their paired bootstrap difference at each size (the same
    bootstrap as the report's "Which differences are real", run on each size's trials)."""
    from lightlayers.report.compare import pairwise

    found: dict[tuple[str, str], list[tuple[str, int | None, float, float, float]]] = {}
    notes: list[str] = []
    n_boot = 0
    for size, n in sizes:
        groups: dict[str, Group] = {}
        for t in run.curve:
            if (train_size(t) or "all") != size:
                continue
            label = f"{t['model']} [{t['protocol']}]" if several else t["model"]
            g = groups.setdefault(label, Group(label, t["model"], t["protocol"]))
            g.done.append(t)
        sub = RunData(run.run_dir, [groups[lb] for lb in labels if lb in groups], [], [],
                      run.meta, {}, run.predictions, {})
        comps, size_notes, n_boot = pairwise(sub, which=(metric,))
        notes += [f"size {size}: {note}" for note in size_notes]
        for c in comps:
            found.setdefault((c.model_a, c.model_b), []).append(
                (size, n, c.difference, c.low, c.high))
    return (tuple(Crossing(a, b, metric, tuple(v)) for (a, b), v in found.items()), notes,
            n_boot)


# --- files --------------------------------------------------------------------------------
def curve_csv(curve: LearningCurve) -> str:
    """``learning_curve.csv``: one row per model and size, with each score's mean, std, 95%
    t-interval over seeds and n."""
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    head = ["model", "protocol", "train_size", "train_images", "seeds", "params_total",
            LATENCY]
    for m in CURVE_METRICS:
        head += [f"{m}_{s}" for s in ("mean", "std", "ci95_low", "ci95_high", "n")]
    w.writerow(head)

    def num(v: float | None) -> str:
        return "" if v is None else repr(float(v))

    for p in curve.points:
        row = [p.label, p.protocol, p.size, "" if p.images is None else p.images,
               " ".join(map(str, p.seeds)), num(p.params), num(p.latency_ms)]
        for m in CURVE_METRICS:
            s = p.stats[m]
            row += [num(s.mean), num(s.std), num(s.ci_low), num(s.ci_high), s.n]
        w.writerow(row)
    return buf.getvalue()


def curve_object(curve: LearningCurve) -> dict[str, Any]:
    """The learning curve as plain JSON values (``report --json``)."""
    from dataclasses import asdict

    return {
        "sizes": [{"size": s, "train_images": n} for s, n in curve.sizes],
        "points": [{"model": p.label, "protocol": p.protocol, "size": p.size,
                    "train_images": p.images, "seeds": list(p.seeds),
                    "params_total": p.params, LATENCY: p.latency_ms,
                    "metrics": {m: {k: v for k, v in asdict(s).items()
                                    if k in ("mean", "std", "ci_low", "ci_high", "n")}
                                for m, s in p.stats.items()}} for p in curve.points],
        "reach": {"metric": curve.reach.metric, "targets": list(curve.reach.targets),
                  "chosen": curve.reach.given,
                  "smallest_size": {label: dict(zip(map(str, curve.reach.targets), sizes,
                                                    strict=True))
                                    for label, sizes in curve.reach.smallest.items()}},
        "crossings": [{"model_a": c.model_a, "model_b": c.model_b, "metric": c.metric,
                       "per_size": [{"size": s, "train_images": n, "difference": d,
                                     "ci95_low": lo, "ci95_high": hi,
                                     "interval_excludes_zero": lo > 0 or hi < 0}
                                    for s, n, d, lo, hi in c.per_size],
                       "sizes_excluding_zero": c.excluding_zero(), "summary": c.sentence()}
                      for c in curve.crossings],
        "latency_measured": curve.latency,
        "settings": ("tuned on the whole training split, used at every size" if curve.tuned
                     else "fixed recipe"),
        "bootstrap_replicates": curve.n_boot,
        "notes": list(curve.notes),
    }


# --- figures ------------------------------------------------------------------------------
def curve_figures(curve: LearningCurve) -> list[Any]:
    """FigureSpecs: one learning curve per score, then score against parameters and against
    int8 CPU latency per score."""
    import matplotlib

    from lightlayers.report import figures as F

    specs = []
    with matplotlib.rc_context(F.RC):
        for m in CURVE_METRICS:
            fig = _curve_figure(curve, m)
            if fig is not None:
                specs.append(F.FigureSpec(
                    f"learning_curve_{m}",
                    f"Test {NAMES[m]} against training images (log scale), per model: the mean "
                    "over seeds, the band its 95% t-interval.", "curve", fig))
        for m in BUDGET_METRICS:
            fig = _budget_figure(curve, m)
            if fig is not None:
                against = ("parameters and int8 CPU latency (batch 1)" if curve.latency
                           else "parameters")
                specs.append(F.FigureSpec(
                    f"budget_{m}",
                    f"Test {NAMES[m]} against {against}, one marker per model and training "
                    "size (labelled with its size); the dotted steps are each size's Pareto "
                    "front (fewer parameters or milliseconds and a higher score win).",
                    "curve", fig))
    return specs


def _curve_figure(curve: LearningCurve, metric: str) -> Any:
    from lightlayers.report import figures as F

    fig = F._new(7.6, 4.6)
    ax = fig.add_subplot()
    drawn = False
    for i, label in enumerate(curve.labels):
        pts = [p for p in curve.points if p.label == label and p.images
               and p.stats[metric].mean is not None]
        if not pts:
            continue
        st = F.style(i, len(curve.labels))
        x = np.array([p.images for p in pts], dtype=float)
        y = np.array([p.stats[metric].mean for p in pts])
        ax.plot(x, y, color=st["color"], marker=st["marker"], linestyle=st["linestyle"],
                markeredgecolor="black", label=label)
        lo = [p.stats[metric].ci_low for p in pts]
        hi = [p.stats[metric].ci_high for p in pts]
        if all(v is not None for v in lo + hi):
            ax.fill_between(x, np.array(lo, float), np.array(hi, float), color=st["color"],
                            alpha=0.18, hatch=st["hatch"], edgecolor=st["color"], linewidth=0)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("Training images (count) — log scale")
    ax.set_ylabel(f"Test {NAMES[metric]} (mean, 95% band over seeds)")
    ax.set_title(f"Learning curve: {NAMES[metric]}")
    ax.grid(which="both", linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8)
    return fig


def _budget_figure(curve: LearningCurve, metric: str) -> Any:
    from lightlayers.report import figures as F

    axes_spec = [("params", "Total parameters (count) — log scale")]
    if curve.latency:
        axes_spec.append(("latency_ms", "int8 CPU latency, batch 1 (ms) — log scale"))
    pts = [p for p in curve.points if p.stats[metric].mean is not None and p.params]
    if not pts:
        return None
    fig = F._new(5.2 * len(axes_spec) + 1.6, 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(axes_spec), sharey=True))
    for ax, (attr, xlabel) in zip(axes, axes_spec, strict=True):
        for i, label in enumerate(curve.labels):
            mine = [p for p in pts if p.label == label and getattr(p, attr)]
            if not mine:
                continue
            st = F.style(i, len(curve.labels))
            xs = [getattr(p, attr) for p in mine]
            ys = [cast(float, p.stats[metric].mean) for p in mine]
            ax.plot(xs, ys, color=st["color"], marker=st["marker"], linestyle="none",
                    markeredgecolor="black", markersize=7, label=label)
            for p, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(p.size, (x, y), textcoords="offset points", xytext=(6, -3),
                            fontsize=7)
        ring = "on a front (ringed)"
        for j, (size, n) in enumerate(curve.sizes):
            here = [p for p in pts if p.size == size and getattr(p, attr)]
            if len(here) < 2:
                continue
            xs = [getattr(p, attr) for p in here]
            ys = [cast(float, p.stats[metric].mean) for p in here]
            front = pareto_front(xs, ys)
            # Darker and in another dash pattern as the size grows (greyscale print).
            shade = 0.4 + 0.6 * j / max(1, len(curve.sizes) - 1)
            ax.step([xs[k] for k in front], [ys[k] for k in front], where="post",
                    color="black", linewidth=1.0, alpha=shade,
                    linestyle=F.LINESTYLES[j % len(F.LINESTYLES)],
                    label=f"front at {size}" + (f" ({n} images)" if n else ""))
            # A front of one model draws no step: the ring shows it.
            ax.plot([xs[k] for k in front], [ys[k] for k in front], linestyle="none",
                    marker="o", markersize=14, markerfacecolor="none", markeredgecolor="black",
                    alpha=shade, label=ring)
            ring = "_nolegend_"
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(which="both", linewidth=0.4, alpha=0.5)
    axes[0].set_ylabel(f"Test {NAMES[metric]} (mean over seeds)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    name = NAMES[metric]
    # First letter only: "AUC" stays as it is spelled.
    fig.suptitle(f"{name[:1].upper()}{name[1:]} against the hardware budget, per training size")
    return fig


# --- the page -----------------------------------------------------------------------------
def curve_html(curve: LearningCurve, figures: Sequence[Any], png: dict[str, bytes],
               svg_written: bool) -> str:
    """The page's "Learning curves" section: sizes, the reach table, the crossings, the
    figures."""
    e = escape
    sizes = ", ".join(f"{s} ({n} images)" if n else s for s, n in curve.sizes)
    parts = [f"<p>Training sizes: {e(sizes)}. Each size is a subset of the training split "
             "drawn by patient (where the data names patients) and stratified by class, "
             "nested (a smaller set lies inside a larger one); validation and test are the "
             "same at every size. Every model trained with the same seeds and protocol at "
             "every size."
             + (" Each model's settings were tuned on the whole training split and used at "
                "every size." if curve.tuned else "")
             + f" The tables above show the largest size ({e(curve.sizes[-1][0])}). All "
             "points in "
             "<a href='learning_curve.csv'>learning_curve.csv</a>.</p>"]
    r = curve.reach
    if r.targets:
        name = NAMES[r.metric]
        head = "".join(f"<th scope='col'>{e(name)} ≥ {x:.2f}</th>" for x in r.targets)
        body = "".join(
            f"<tr><th scope='row'>{e(label)}</th>"
            + "".join(f"<td class='num'>{e(_size_text(s, curve))}</td>" for s in sizes_)
            + "</tr>" for label, sizes_ in r.smallest.items())
        how = ("levels chosen with --reach" if r.given else
               "levels: 90%, 95% and 99% of the best mean at the largest size, rounded down; "
               "choose others with `lightlayers report RUN --reach METRIC:X,Y`")
        parts.append(f"<h3>Smallest training set at which each model reaches a score</h3>"
                     f"<table id='reach'><thead><tr><th scope='col'>Model</th>{head}</tr>"
                     f"</thead><tbody>{body}</tbody></table><p>Mean over seeds; — : not "
                     f"reached at any size ({e(how)}).</p>")
    if curve.crossings:
        name = NAMES[r.metric]
        head = "".join(f"<th scope='col'>{e(s)}</th>" for s, _ in curve.sizes)
        rows = []
        for c in curve.crossings:
            cells = {s: (d, lo, hi) for s, _, d, lo, hi in c.per_size}
            tds = []
            for s, _ in curve.sizes:
                if s not in cells:
                    tds.append("<td class='num'>—</td>")
                    continue
                d, lo, hi = cells[s]
                text = e(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                if lo > 0 or hi < 0:
                    text = f"<strong>{text}</strong>"
                tds.append(f"<td class='num'>{text}</td>")
            rows.append(f"<tr><th scope='row'>{e(c.model_a)} − {e(c.model_b)}</th>"
                        f"{''.join(tds)}<td>{e(c.sentence())}</td></tr>")
        parts.append(f"<h3>Where two models differ ({e(name)})</h3><div class='scroll'>"
                     f"<table id='crossings'><thead><tr><th scope='col'>A − B</th>{head}"
                     f"<th scope='col'>In short</th></tr></thead><tbody>{''.join(rows)}"
                     f"</tbody></table></div><p>Paired bootstrap at each size "
                     f"({curve.n_boot:,} replicates, as in “Which differences are real”). "
                     "<strong>Bold</strong>: the 95% interval excludes 0 at that size (each "
                     "pair and size alone, not adjusted for the others).</p>")
    for f in figures:
        data = base64.b64encode(png[f.name]).decode("ascii")
        link = f" <a href='figures/{e(f.name)}.svg'>SVG</a>" if svg_written else ""
        parts.append(f"<figure id='fig-{e(f.name)}'><img alt='{e(f.caption)}' "
                     f"src='data:image/png;base64,{data}'><figcaption>{e(f.caption)}{link}"
                     "</figcaption></figure>")
    parts += [f"<p>{e(n)}</p>" for n in curve.notes]
    return "\n".join(parts)


def _size_text(size: str | None, curve: LearningCurve) -> str:
    if size is None:
        return "—"
    n = dict(curve.sizes).get(size)
    return f"{size} ({n} images)" if n else size
