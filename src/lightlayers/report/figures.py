"""The report's figures (matplotlib, no display): one bar chart per criterion, the training
history of each model, accuracy against parameters with its Pareto front, ROC curves and
confusion matrices.

Every figure must read in greyscale print, so models differ by hatching, marker and line style
as well as by colour (viridis: its luminance rises monotonically, so greys stay distinct).
Files are byte-identical from one run to the next: fixed SVG hash salt, no dates in metadata.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, never need a display

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightlayers.metrics.registry import chart_metrics, get_metric
from lightlayers.report.ensemble import Ensemble
from lightlayers.report.load import Group, RunData
from lightlayers.report.stats import pareto_front, summarize
from lightlayers.report.table import Row

HATCHES = ("", "//", "\\\\", "xx", "..", "++", "oo", "--", "**", "||")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
LOG_RATIO = 50  # a log axis once the values span more than this factor
DPI = 110
SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"dpi": DPI, "metadata": {"Software": None}},
    "svg": {"metadata": {"Date": None}},
}
RC: Any = {"svg.hashsalt": "lightlayers-report", "svg.fonttype": "path",
          "font.size": 9}


def criteria() -> tuple[tuple[str, str, str], ...]:
    """(metric, axis label with unit, chart title) of each criterion chart: the registry's
    metrics with ``chart`` set, in their order."""
    return tuple((m.name, m.ylabel, m.title) for m in chart_metrics())



@dataclass
class FigureSpec:
    name: str  # file stem under report/figures/
    caption: str
    section: str  # "criteria" | "history" | "tradeoff" | "roc" | "confusion"
    figure: Figure


def style(i: int, n: int) -> dict[str, Any]:
    """Colour, hatch, marker and line style of the i-th of n models."""
    cmap = colormaps["viridis"]
    return {
        "color": cmap(0.1 + 0.8 * (i / max(n - 1, 1))),
        "hatch": HATCHES[i % len(HATCHES)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def use_log(values: Sequence[float]) -> bool:
    pos = [v for v in values if v is not None and v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > LOG_RATIO


def _new(width: float, height: float) -> Figure:
    # Figure, not pyplot: no global figure registry to leak into or to close.
    return Figure(figsize=(width, height), layout="constrained")


# --- one bar chart per criterion ------------------------------------------------------------
def majority_scores(run: RunData) -> tuple[str, dict[str, float]] | None:
    """The class always predicting which scores best on the test split (its most frequent
    class), and every registered score of doing so: the line a model must beat. None when no
    test predictions were stored."""
    from lightlayers.metrics.classification import classification_metrics

    for g in run.groups:
        for t in g.done:
            pred = run.predictions.get(t["id"])
            if pred is None or len(pred["labels"]) == 0:
                continue
            labels = np.asarray(pred["labels"], dtype=np.int64)
            k = np.asarray(pred["probs"]).shape[1]
            top = int(np.bincount(labels, minlength=k).argmax())
            positive = (run.meta.get("data") or {}).get("positive_class")
            positive = positive if isinstance(positive, int) and k == 2 else None
            got = classification_metrics(labels, np.eye(k)[np.full(len(labels), top)],
                                         positive)
            classes = list(pred["classes"])
            name = str(classes[top]) if top < len(classes) else str(top)
            return name, {m: float(v) for m, v in got.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)}
    return None


# The charts that show the majority-class line: a score there only means something above it.
BASELINE_CHARTS = ("accuracy", "sensitivity", "specificity")


def criterion_chart(rows: Sequence[Row], key: str, ylabel: str, title: str,
                    baseline: tuple[str, float] | None = None) -> Figure | None:
    """A bar per model; ``baseline`` (class name, score): a line at the score of always
    predicting that class."""
    col = get_metric(key)
    styled = [(i, r) for i, r in enumerate(rows) if r.stats[key].mean is not None]
    if not styled:
        return None
    means = [cast(float, r.stats[key].mean) for _, r in styled]  # None left out above
    stds = [r.stats[key].std or 0.0 for _, r in styled]
    log = use_log(means)
    fig = _new(max(4.8, 1.15 * len(styled) + 2.2), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(styled))
    err = None
    if any(stds):
        # On a log axis the lower whisker must stay above zero.
        lower = [min(s, 0.95 * m) if log else s for m, s in zip(means, stds, strict=True)]
        err = np.array([lower, stds])
    bars = ax.bar(x, means, yerr=err, capsize=5, edgecolor="black", linewidth=0.8,
                  error_kw={"elinewidth": 1.2, "ecolor": "black"})
    for bar, (i, _) in zip(bars, styled, strict=True):
        st = style(i, len(rows))
        bar.set_facecolor(st["color"])
        bar.set_hatch(st["hatch"])
    if col.spread:
        # Each seed's value, so the reader sees n and the spread, not only mean ± std.
        for xi, (_, r) in zip(x, styled, strict=True):
            vals = [t[key] for t in r.group.done if t[key] is not None]
            if len(vals) > 1:
                ax.plot([xi] * len(vals), vals, linestyle="none", marker="o", markersize=4,
                        markerfacecolor="white", markeredgecolor="black", zorder=3)
    ticks = [f"{r.label}\n{col.fmt(m)}" for (_, r), m in zip(styled, means, strict=True)]
    ax.set_xticks(x, ticks, rotation=20 if len(styled) > 4 else 0, ha="center", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel + (" — log scale" if log else ""))
    ax.set_xlabel("Model (value: mean over seeds)")
    spread = "mean ± std, dots = seeds" if col.spread and any(stds) else "per model"
    ax.set_title(f"{title} ({spread})")
    ax.grid(axis="y", which="both", linewidth=0.4, alpha=0.5)
    ax.set_axisbelow(True)
    if baseline is not None:
        name, value = baseline
        ax.axhline(value, color="crimson", linestyle="--", linewidth=1.4, zorder=4,
                   label=f"always {name} (majority class): {value:.3f}")
        ax.set_ylim(0, 1.12)  # room above 1 for the legend
        ax.legend(fontsize=8, loc="upper right")
    return fig


# --- training history -----------------------------------------------------------------------
def _band(series: list[dict[int, float]]) -> tuple[np.ndarray, ...] | None:
    epochs = sorted({e for s in series for e in s})
    if not epochs:
        return None
    mean, lo, hi = [], [], []
    for e in epochs:
        vals = [s[e] for s in series if e in s]
        mean.append(float(np.mean(vals)))
        lo.append(min(vals))
        hi.append(max(vals))
    return np.array(epochs), np.array(mean), np.array(lo), np.array(hi)


def history_figure(group: Group, histories: dict[int, list[dict[str, Any]]]) -> Figure | None:
    runs = [histories.get(t["id"], []) for t in group.done]
    if not any(runs):
        return None
    fig = _new(9.0, 3.8)
    axes = fig.subplots(1, 2)
    panels = (("acc", "Accuracy (fraction correct)"), ("loss", "Loss (cross-entropy)"))
    phases = (("train", "train", "-", "o", "tab:blue", "////"),
              ("val", "validation", "--", "s", "tab:orange", "\\\\\\\\"))
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        last = 1
        for phase, name, ls, marker, color, hatch in phases:
            field = f"{phase}_{metric}"
            series = [{h["epoch"]: h[field] for h in run if h.get(field) is not None}
                      for run in runs]
            band = _band([s for s in series if s])
            if band is None:
                continue
            ep, mean, lo, hi = band
            last = max(last, int(ep[-1]))
            ax.plot(ep, mean, linestyle=ls, marker=marker, color=color, label=f"{name} (mean)")
            if len([s for s in series if s]) < 2:
                continue
            if len(ep) == 1:  # a band of one epoch has no width: whiskers show the range
                ax.errorbar(ep, mean, yerr=[mean - lo, hi - mean], color=color, capsize=6,
                            linestyle="none", label=f"{name} (min–max)")
            else:
                ax.fill_between(ep, lo, hi, color=color, alpha=0.18, hatch=hatch,
                                edgecolor=color, linewidth=0, label=f"{name} (min–max)")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        # MaxNLocator falls back to fractions when under two integers fit: list short runs.
        if last <= 20:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.grid(linewidth=0.4, alpha=0.5)
        ax.legend(fontsize=8)
    n = len(group.done)
    fig.suptitle(f"{group.label}: training history "
                 f"({'mean of ' + str(n) + ' seeds, band = min–max' if n > 1 else '1 seed'})")
    return fig


# --- accuracy against parameters ---------------------------------------------------------------
def tradeoff_figure(rows: Sequence[Row], ensembles: Sequence[Ensemble] = ()
                    ) -> tuple[Figure, list[str]] | None:
    # A log axis has no place for zero parameters (a model that was never counted).
    pts = [(i, r) for i, r in enumerate(rows)
           if r.stats["params_total"].mean and r.stats["accuracy"].mean is not None]
    if not pts:
        return None
    xs = [cast(float, r.stats["params_total"].mean) for _, r in pts]  # None left out above
    ys = [cast(float, r.stats["accuracy"].mean) for _, r in pts]
    front = pareto_front(xs, ys)
    fig = _new(9.6, 4.8)
    ax = fig.add_subplot()
    for (i, r), x, y in zip(pts, xs, ys, strict=True):
        st = style(i, len(rows))
        ax.errorbar(x, y, yerr=r.stats["accuracy"].std or 0.0, marker=st["marker"],
                    color=st["color"], markeredgecolor="black", markersize=8, capsize=4,
                    ecolor="black", linestyle="none", label=r.label)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8)
    # Seed ensembles: hollow markers of their model's style, at the members' total.
    # One legend entry stands for all of them (each is labelled beside its marker), so the
    # legend stays short enough to sit beside the axes instead of over the points.
    index = {r.group.label: i for i, r in enumerate(rows)}
    hollow = "seed ensemble (hollow)"
    for e in ensembles:
        acc = e.metrics.get("accuracy")
        if not e.params_total or acc is None:
            continue
        st = style(index.get(e.group.label, 0), len(rows))
        ax.plot(e.params_total, acc, marker=st["marker"], markerfacecolor="none",
                markeredgecolor=st["color"], markeredgewidth=1.8, markersize=9,
                linestyle="none", label=hollow)
        hollow = "_nolegend_"
        ax.annotate(f"{e.group.label} ×{len(e.seeds)}", (e.params_total, acc),
                    textcoords="offset points", xytext=(7, -10), fontsize=7)
    fx, fy = [xs[j] for j in front], [ys[j] for j in front]
    ax.step(fx, fy, where="post", color="black", linestyle=":", linewidth=1.2,
            label="Pareto front")
    ax.plot(fx, fy, linestyle="none", marker="o", markersize=15, markerfacecolor="none",
            markeredgecolor="black", label="on the front")
    ax.set_xscale("log")
    # Room on the right for the last marker's label, which would otherwise be cut off.
    right = max([*xs, *(e.params_total for e in ensembles if e.params_total)])
    ax.set_xlim(right=right * 3.0)
    ax.set_xlabel("Total parameters (count) — log scale")
    ax.set_ylabel("Test accuracy (mean ± std over seeds)")
    ax.set_title("Accuracy against parameters (fewer parameters and higher accuracy win)")
    ax.grid(which="both", linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig, [pts[j][1].label for j in front]


def _unit_square(ax: Any, diagonal: str) -> None:
    """[0, 1] x [0, 1] at equal scale, with the diagonal (labelled ``diagonal``)."""
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label=diagonal)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")


# --- ROC ------------------------------------------------------------------------------------
def _roc_scores(pred: dict[str, Any], positive: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score) for one curve: the positive class when binary, else the micro-average
    of one-vs-rest (every class's column, flattened)."""
    labels, probs = pred["labels"], pred["probs"]
    if probs.shape[1] == 2:
        pos = 1 if positive is None else positive
        return (labels == pos).astype(int), probs[:, pos]
    onehot = np.eye(probs.shape[1], dtype=int)[labels]
    return onehot.ravel(), probs.ravel()


def roc_figure(run: RunData) -> tuple[Figure | None, str | None]:
    """The figure, or None and the reason it was skipped."""
    from sklearn.metrics import auc, roc_curve

    positive = (run.meta.get("data") or {}).get("positive_class")
    grid = np.linspace(0.0, 1.0, 201)
    curves = []
    classes: list[str] = []
    for i, g in enumerate(run.groups):
        tprs, aucs = [], []
        # (FPR, TPR, threshold) where each seed decides: its operating point on the curve.
        points: list[tuple[float, float, float | None]] = []
        for t in g.done:
            pred = run.predictions.get(t["id"])
            if pred is None or len(pred["labels"]) == 0:
                continue
            classes = classes or list(pred["classes"])
            truth, score = _roc_scores(pred, positive)
            if len(np.unique(truth)) < 2:
                continue  # one class only in the test labels: no ROC
            fpr, tpr, _ = roc_curve(truth, score)
            aucs.append(float(auc(fpr, tpr)))
            if pred["probs"].shape[1] == 2:
                from lightlayers.report.compare import predicted

                pos = 1 if positive is None else positive
                said = predicted(np.asarray(pred["probs"]), pos, t.get("threshold")) == pos
                points.append((float(said[truth == 0].mean()), float(said[truth == 1].mean()),
                               t.get("threshold")))
            # Vertical averaging: every seed's TPR read off on one FPR grid.
            interp = np.interp(grid, fpr, tpr)
            interp[0] = 0.0
            tprs.append(interp)
        if tprs:
            curves.append((i, g, np.mean(tprs, axis=0), summarize(aucs), points))
    if not curves:
        return None, "ROC curves skipped: no stored test probabilities with both classes"
    multiclass = len(classes) > 2
    fig = _new(6.4, 5.4)
    ax = fig.add_subplot()
    for i, g, tpr, s, points in curves:
        st = style(i, len(run.groups))
        spread = f" ± {s.std:.3f}" if s.std is not None else ""
        ax.plot(grid, tpr, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                markevery=20, markeredgecolor="black", linewidth=1.6,
                label=f"{g.label} (AUC {s.mean:.3f}{spread}, n={s.n})")
        if points:
            fx, fy = np.mean([p[0] for p in points]), np.mean([p[1] for p in points])
            thr = [p[2] for p in points if p[2] is not None]
            rule = f"threshold {np.mean(thr):.2f}" if thr else "argmax"
            ax.plot(fx, fy, marker=st["marker"], markersize=13, color=st["color"],
                    markeredgecolor="black", markeredgewidth=2, linestyle="none", zorder=5,
                    label=f"{g.label} operating point ({rule}): sens. {fy:.2f}, "
                          f"spec. {1 - fx:.2f}")
    _unit_square(ax, "chance")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    if multiclass:
        what = "micro-average one-vs-rest"
    else:
        pos = 1 if positive is None else positive
        what = f"positive class: {classes[pos] if pos < len(classes) else pos}"
    ax.set_title(f"ROC on the test split ({what}; mean over seeds)\nlarge markers: where "
                 "each model decides (its threshold, mean over seeds)")
    ax.grid(linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8, loc="lower right")
    return fig, None


# --- calibration ----------------------------------------------------------------------------
def reliability_figure(run: RunData) -> Figure | None:
    """Top-label reliability per model, the test predictions of its seeds pooled: a point per
    confidence bin holding images, at (mean confidence, accuracy); the diagonal is perfect."""
    from lightlayers.metrics.calibration import reliability

    curves = []
    for i, g in enumerate(run.groups):
        preds = [p for t in g.done if (p := run.predictions.get(t["id"])) is not None
                 and len(p["labels"])]
        if not preds:
            continue
        rel = reliability(np.concatenate([p["labels"] for p in preds]),
                          np.concatenate([p["probs"] for p in preds]))
        curves.append((i, g, rel, len(preds)))
    if not curves:
        return None
    fig = _new(6.4, 7.4)
    ax, counts = fig.subplots(2, 1, height_ratios=(3, 1.3))
    width = 1.0 / len(curves[0][2].count) / (len(curves) + 1)
    for j, (i, g, rel, n) in enumerate(curves):
        st = style(i, len(run.groups))
        full = rel.count > 0
        ax.plot(rel.confidence[full], rel.accuracy[full], color=st["color"],
                linestyle=st["linestyle"], marker=st["marker"], markeredgecolor="black",
                linewidth=1.4, label=f"{g.label} (ECE {rel.ece:.3f}, {n} seed"
                f"{'s' if n != 1 else ''} pooled)")
        # How many images each point stands on: a bin of 3 images says little.
        left = rel.edges[:-1] + width * (j + 0.5)
        counts.bar(left, rel.count, width=width, color=st["color"], hatch=st["hatch"],
                   edgecolor="black", linewidth=0.5, align="edge", label=g.label)
    counts.set_xlim(-0.01, 1.01)
    counts.set_xlabel("Confidence bin")
    counts.set_ylabel("Images per bin")
    counts.grid(axis="y", linewidth=0.4, alpha=0.5)
    if any(c[2].count.max() > 50 * max(1, c[2].count[c[2].count > 0].min()) for c in curves):
        counts.set_yscale("log")
    _unit_square(ax, "perfect")
    ax.set_xlabel("Confidence (probability of the predicted class), bin mean")
    ax.set_ylabel("Accuracy in the bin (fraction correct)")
    ax.set_title("Reliability on the test split (15 equal-width bins)")
    ax.grid(linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# --- Grad-CAM --------------------------------------------------------------------------------
def cam_figure(run: RunData, model: str, cam_min_side: int | None = None,
               datasets: dict[Any, Any] | None = None) -> tuple[Figure | None, str | None]:
    """The heatmaps of a few test images of ``model`` (lightlayers.deploy.examples: the trial
    `lightlayers export` would choose, its recorded predictions, its checkpoint), or None and
    why not. Models that never had a checkpoint (no registered model) are passed over."""
    from lightlayers.models import list_models

    if model not in list_models():
        return None, None
    try:
        from lightlayers.deploy.errors import DeployError
        from lightlayers.deploy.examples import cam_examples
        from lightlayers.deploy.examples import cam_figure as draw
        from lightlayers.runfolder.errors import RunFolderError
    except ImportError as e:  # pragma: no cover - the deploy package is part of lightlayers
        return None, str(e)
    try:
        examples = cam_examples(run.run_dir, model, per_kind=3, cam_min_side=cam_min_side,
                                datasets=datasets)
    except (DeployError, RunFolderError) as e:
        return None, str(e)
    except ImportError as e:  # Captum, with lightlayers[onnx]
        return None, f"{e}; install lightlayers[onnx]"
    if not any(examples.values()):
        return None, "no test image to show"
    return draw(examples, f"{model}: Grad-CAM on test images"), None


# --- confusion matrices ---------------------------------------------------------------------
def confusion_figure(group: Group, run: RunData) -> Figure | None:
    mats = [np.asarray(t["confusion"]) for t in group.done if t.get("confusion")]
    if not mats:
        return None
    cm = np.sum(mats, axis=0)
    k = cm.shape[0]
    names = _class_names(group, run, k)
    fig = _new(max(5.0, 0.6 * k + 3.4), max(4.2, 0.55 * k + 2.8))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Greys", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(image, ax=ax, label="Test images (count)", shrink=0.8)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, cm / rows, 0.0)
    small = 7 if k > 5 else 9
    for r in range(k):
        for c in range(k):
            dark = cm[r, c] > cm.max() / 2
            ax.text(c, r, f"{int(cm[r, c]):,}\n({share[r, c]:.0%})", ha="center", va="center",
                    fontsize=small, color="white" if dark else "black")
    ax.set_xticks(range(k), names, rotation=30 if k > 3 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    n = len(mats)
    fig.suptitle(f"{group.label}: test confusion matrix\n(counts summed over {n} seed"
                 f"{'s' if n != 1 else ''}; % of the true class)")
    return fig


def _class_names(group: Group, run: RunData, k: int) -> list[str]:
    for t in group.done:
        pred = run.predictions.get(t["id"])
        if pred is not None and len(pred["classes"]) == k:
            return [str(c) for c in pred["classes"]]
    classes = (run.meta.get("data") or {}).get("classes")
    if isinstance(classes, list) and len(classes) == k:
        return [str(c) for c in classes]
    return [str(i) for i in range(k)]


# --- all of them ------------------------------------------------------------------------------
def build_figures(run: RunData, rows: Sequence[Row], ensembles: Sequence[Ensemble] = (),
                  cam_min_side: int | None = None) -> tuple[list[FigureSpec], list[str]]:
    """Every figure the run allows, and a note for each one it does not. ``cam_min_side``:
    the smallest Grad-CAM map drawn (default lightlayers.deploy.graph.CAM_MIN_SIDE)."""
    with matplotlib.rc_context(RC):  # font sizes are read when the text is created
        return _build_figures(run, rows, ensembles, cam_min_side)


def _build_figures(run: RunData, rows: Sequence[Row], ensembles: Sequence[Ensemble],
                   cam_min_side: int | None = None) -> tuple[list[FigureSpec], list[str]]:
    specs: list[FigureSpec] = []
    notes: list[str] = []
    names: set[str] = set()

    def add(name: str, caption: str, section: str, fig: Figure) -> None:
        stem, n = name, 2
        while stem in names:  # two labels with the same slug
            stem, n = f"{name}-{n}", n + 1
        names.add(stem)
        specs.append(FigureSpec(stem, caption, section, fig))

    majority = majority_scores(run)
    charts = list(criteria())
    charts += [(m.name, m.ylabel, m.title) for m in map(get_metric, BASELINE_CHARTS)
               if m.name not in {k for k, _, _ in charts}]
    for key, ylabel, title in charts:
        line = None
        if majority is not None and key in BASELINE_CHARTS and key in majority[1]:
            line = (majority[0], majority[1][key])
        fig = criterion_chart(rows, key, ylabel, title, line)
        if fig is None:
            notes.append(f"{title}: no finished trial records it; chart skipped")
        else:
            extra = (f" Dashed line: always answering {line[0]}, the test split's majority "
                     f"class, scores {line[1]:.3f}." if line else "")
            add(f"criterion_{key}", f"{title} per model.{extra}", "criteria", fig)
    for g in run.groups:
        fig = history_figure(g, run.histories)
        if fig is not None:
            add(f"history_{slug(g.label)}",
                f"{g.label}: accuracy and loss per epoch, train and validation.", "history", fig)
        elif g.done:
            notes.append(f"{g.label}: no per-epoch history recorded; history figure skipped")
    trade = tradeoff_figure(rows, ensembles)
    if trade is not None:
        fig, front = trade
        add("accuracy_vs_params",
            "Test accuracy against total parameters (log scale); Pareto front of the single "
            "models: " + ", ".join(front) + "."
            + (" Hollow markers: seed ensembles (their seeds' probabilities averaged), at "
               "their members' total parameters." if ensembles else ""), "tradeoff", fig)
    fig, why = roc_figure(run)
    if fig is not None:
        add("roc", "ROC curves of all models on the test split; the large marker on each is "
            "its operating point (the decision threshold chosen on validation).", "roc", fig)
    elif why:
        notes.append(why)
    fig = reliability_figure(run)
    if fig is not None:
        add("reliability", "Calibration: accuracy against confidence on the test split, per "
            "model (ECE: expected calibration error, mean |accuracy - confidence| over "
            "images); below, the images in each confidence bin.", "calibration", fig)
    datasets: dict[Any, Any] = {}  # one decode of the data for every model's heatmaps
    from lightlayers.deploy.graph import CAM_MIN_SIDE

    side = CAM_MIN_SIDE if cam_min_side is None else cam_min_side
    for model in dict.fromkeys(g.model for g in run.groups if g.done):
        fig, why = cam_figure(run, model, cam_min_side, datasets)
        if fig is not None:
            add(f"cam_{slug(model)}",
                f"{model}: where it looked (Grad-CAM of the predicted class over the image, "
                f"the seed chosen on validation, on the last layer whose map is at least "
                f"{side}x{side} "
                "over the image; the colour is each map's share of its own maximum), on its "
                "most confident true positives, false positives and false negatives of the "
                "test split.", "cam", fig)
        elif why and why.startswith("map too coarse"):
            notes.append(f"{model}: no Grad-CAM figure: {why}")
        elif why:
            notes.append(f"{model}: Grad-CAM figure skipped ({why})")
    for g in run.groups:
        fig = confusion_figure(g, run)
        if fig is not None:
            add(f"confusion_{slug(g.label)}",
                f"{g.label}: confusion matrix on the test split, summed over seeds.",
                "confusion", fig)
    return specs, notes


def render(fig: Figure, fmt: str) -> bytes:
    """The figure's bytes in ``fmt`` ("png" or "svg"), reproducibly."""
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format=fmt, **SAVE_OPTIONS[fmt])
    return buf.getvalue()
