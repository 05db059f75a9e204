"""``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS, no
network), reproducible byte for byte: no timestamps, sorted keys.

A tiny inline script records on ``<body>`` how many images decoded, how many table rows
exist and what of the layout a reader would miss (a table wider than its box, a header or a
number broken inside itself), so a headless browser's dumped DOM says whether the page renders.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from html import escape
from typing import Any

from lightlayers.metrics.registry import all_metrics, get_metric
from lightlayers.report.compare import Comparison, distinguishable_sentence, holm_family_text
from lightlayers.report.ensemble import Ensemble
from lightlayers.report.figures import FigureSpec, majority_scores
from lightlayers.report.load import RunData, sized_model
from lightlayers.report.stats import Summary, summarize
from lightlayers.report.table import (
    DIAGNOSED,
    FEW_SEEDS,
    Row,
    columns,
    diagnosis_lines,
    format_cell,
)

SECTIONS = (
    ("criteria", "One chart per criterion"),
    ("history", "Training history"),
    ("tradeoff", "Accuracy against size"),
    ("roc", "ROC curves"),
    ("calibration", "Calibration"),
    ("cam", "Where the models looked (Grad-CAM)"),
    ("confusion", "Confusion matrices"),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #111;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #999; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
/* Side padding of .35em: the model's name, six scores as "0.8964 ± 0.0047", seeds and
   collapsed runs fit 1200 px even for "transfer-mobilenet_v3_large" (not at .5em). */
th, td { border: 1px solid #bbb; padding: .25em .35em; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; white-space: nowrap; }
/* A difference over its interval: three scores side by side on one line each are wider than
   the page. */
td.diff .nowrap { display: block; }
tbody th, td.name { white-space: nowrap; text-align: left; }
/* A model's label wraps between its name and its qualifiers ("[improved]", "(weights: none)")
   when its table would be wider than the page, and nowhere else: not at the hyphen of
   "transfer-resnet18", not inside a qualifier. */
tbody th.label, td.label { white-space: normal; overflow-wrap: normal; }
.nowrap { white-space: nowrap; }
tr.incomplete th { font-style: italic; }
.notes { border-left: 4px solid #555; background: #f4f4f4; padding: .5em 1em; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .85em; max-width: 60em; }
pre { background: #f6f6f6; padding: .6em; font-size: .85em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
td, th, li, p, figcaption { overflow-wrap: anywhere; }
/* A header breaks between its words, never inside one ("Seed" / "s"). */
thead th { overflow-wrap: normal; }
.scroll { overflow-x: auto; max-width: 100%; }
#summary { border: 2px solid #333; padding: .3em 1em; background: #fafafa; }
#summary li { margin: .2em 0; }
dl.glossary dt { font-weight: bold; } dl.glossary dd { margin: 0 0 .5em 1.5em; }
"""

# Records the render check; it changes nothing visible.
SCRIPT = r"""
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = document.querySelectorAll("#results tbody tr").length;
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
  document.body.setAttribute("data-table-rows", String(rows));
  document.body.setAttribute("data-scroll-width",
                             String(document.documentElement.scrollWidth));
  document.body.setAttribute("data-window-width", String(window.innerWidth));
  var first = document.querySelector("body > h1 + *");
  document.body.setAttribute("data-first-section", first ? (first.id || first.tagName) : "");
  // The lines an element's text is laid out on, counted by the distinct tops of its text
  // boxes (of text nodes only: a box around several lines would count as one more).
  function lines(el) {
    var tops = {};
    var walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    var range = document.createRange();
    while (walk.nextNode()) {
      range.selectNodeContents(walk.currentNode);
      Array.prototype.forEach.call(range.getClientRects(), function (r) {
        if (r.width > 0) { tops[Math.round(r.top)] = true; }
      });
    }
    return Object.keys(tops).length;
  }
  // Whether a line of the element's text starts right after a character that is not a
  // space: a break inside a word ("Seed" / "s"), at its hyphen too ("Holm-" / "adjusted"),
  // which counting lines against words misses when the header has a space elsewhere.
  function brokenInsideWord(el) {
    var walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    var range = document.createRange();
    var prev = null;  // the last character laid out: its bottom, and whether a space follows
    while (walk.nextNode()) {
      var node = walk.currentNode, text = node.textContent;
      for (var i = 0; i < text.length; i++) {
        var space = /\s/.test(text[i]);
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        var box = Array.prototype.filter.call(range.getClientRects(),
                                              function (r) { return r.width > 0; })[0];
        if (space || !box) {
          if (space && prev) { prev.space = true; }
          continue;
        }
        // Below the last character rather than beside it: a new line.
        if (prev && !prev.space && box.top >= prev.bottom - 1) { return true; }
        prev = { bottom: box.bottom, space: false };
      }
    }
    return false;
  }
  var broken = Array.prototype.slice.call(document.querySelectorAll("thead th"))
    .filter(brokenInsideWord)
    .map(function (th) { return th.textContent.trim(); });
  document.body.setAttribute("data-broken-headers", broken.join("|"));
  // A number cell on more lines than it has unbreakable pieces: a number broke inside itself.
  var numbers = Array.prototype.slice.call(document.querySelectorAll("td.num"))
    .filter(function (td) {
      return lines(td) > Math.max(1, td.querySelectorAll(".nowrap").length);
    })
    .map(function (td) { return td.textContent.trim(); });
  document.body.setAttribute("data-broken-numbers", numbers.join("|"));
  // A table wider than its sideways-scrolling box hides its last columns until scrolled.
  var overflowing = Array.prototype.slice.call(document.querySelectorAll(".scroll"))
    .filter(function (box) { return box.scrollWidth > box.clientWidth; })
    .map(function (box) {
      var table = box.querySelector("table");
      var heading = box.previousElementSibling;
      return (table && table.id) || (heading ? heading.textContent.trim() : "table");
    });
  document.body.setAttribute("data-overflowing-tables", overflowing.join("|"));
});
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def label_html(label: str) -> str:
    """A model's label as the pieces it may wrap between: its name, then each bracketed
    qualifier (" [improved]", " (weights: none)", a trailing "*" kept with its piece)."""
    pieces = re.findall(r"(?:\[[^\]]*\]|\([^)]*\)|\S)+", label)
    return " ".join(f"<span class='nowrap'>{_e(p)}</span>" for p in pieces)


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th scope='row'>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in items if v is not None and v != "")
    return f"<table>{body}</table>" if body else "<p>Not recorded.</p>"


def _pre(obj: Any) -> str:
    import yaml

    text = yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return f"<pre>{_e(text)}</pre>"


# The results split by the question a reader asks of them, so each table fits a page: the
# metric names of each group, in the order shown (those no model recorded are left out).
TABLE_GROUPS = (
    ("results", "Accuracy and clinical scores",
     ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1")),
    ("results-calibration", "Calibration", ("ece", "test_loss")),
    ("results-cost", "Cost: size and time",
     ("params_total", "params_trainable", "size_mb", "macs", "total_time_s", "epoch_time_s",
      "infer_img_s", "latency_ms")),
    ("results-deployment", "Deployment (ONNX Runtime and PyTorch on the CPU)",
     ("onnx_fp32_mb", "onnx_int8_mb", "ort_latency_ms", "ort_int8_latency_ms",
      "torch_cpu_latency_ms")),
)


def _short(label: str, unit: str = "") -> str:
    """A column heading from a metric's label, with its unit when that is a time unit."""
    text = label.removeprefix("Test ")
    first = unit.split(",")[0].strip()
    return text[:1].upper() + text[1:] + (f" ({first})" if first in ("ms", "s") else "")


def _stat(r: Row, name: str) -> Summary:
    """A metric of a row's trials over seeds (the row's own summary when it keeps one)."""
    return r.stats.get(name) or summarize(t.get(name) for t in r.group.done)


def results_table(rows: Sequence[Row], after_first: str = "") -> str:
    """The results as one table per group of :data:`TABLE_GROUPS`; the first keeps the
    seeds and collapsed runs, and the id ``results`` (the render check counts its rows)."""
    out = []
    grouped = {n for _, _, names in TABLE_GROUPS for n in names}
    # A metric registered with a table column and no group here still gets a table.
    others = tuple(c.name for c in columns(rows) if c.name not in grouped)
    for i, (table_id, title, names) in enumerate(
            (*TABLE_GROUPS, ("results-other", "Other scores", others))):
        metrics = [get_metric(n) for n in names if n in {m.name for m in all_metrics()}]
        metrics = [m for m in metrics if any(_stat(r, m.name).mean is not None for r in rows)]
        if not metrics:
            continue
        head = "<th scope='col'>Model</th>" + "".join(
            f"<th scope='col'>{_e(m.header or _short(m.label, m.unit))}</th>"
            for m in metrics) + ("<th scope='col'>Seeds</th><th scope='col'>Collapsed runs"
                                 "</th>" if i == 0 else "")
        body = []
        for r in rows:
            cells = r.cells(cols=[])
            cls = " class='incomplete'" if r.group.incomplete else ""
            tds = f"<th scope='row' class='label'>{label_html(cells[0])}</th>" + "".join(
                f"<td class='num'>{_e(format_cell(_stat(r, m.name), m))}</td>"
                for m in metrics)
            if i == 0:
                tds += "".join(f"<td class='num'>{_e(c)}</td>" for c in cells[1:])
            body.append(f"<tr{cls} data-model='{_e(r.label)}'>{tds}</tr>")
        out.append(f"<h3>{_e(title)}</h3><div class='scroll'><table id='{table_id}'><thead>"
                   f"<tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
        if i == 0 and after_first:
            out.append(after_first)  # the diagnoses behind its collapsed-runs flags
    return "\n".join(out)


# --- the summary at the top ------------------------------------------------------------------
KEY_METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
               ("auc", "AUC"))


def _fastest_key(rows: Sequence[Row]) -> tuple[str, str] | None:
    """The latency the study measured for every model: ONNX Runtime's when deployed, else
    PyTorch's batch-1 latency."""
    for key, what in (("ort_latency_ms", "ONNX Runtime batch-1 latency"),
                      ("latency_ms", "batch-1 latency")):
        if rows and all(_stat(r, key).mean is not None for r in rows):
            return key, what
    return None


def summary_html(rows: Sequence[Row], comparisons: Sequence[Comparison],
                 majority: tuple[str, dict[str, float]] | None = None) -> str:
    """What the study found, in sentences made from the numbers: per key score, the best
    model with its 95% interval, the models the paired bootstrap does not separate from it,
    and the smallest and the fastest of that group."""
    items = []
    fastest = _fastest_key(rows)
    for key, name in KEY_METRICS:
        scored = [r for r in rows if _stat(r, key).mean is not None]
        if not scored:
            continue
        best = max(scored, key=lambda r: _stat(r, key).mean or 0.0)
        st = _stat(best, key)
        if st.n >= 2 and st.ci_low is not None and st.ci_high is not None:
            ci = (f"95% interval {max(0.0, st.ci_low):.3f}–{min(1.0, st.ci_high):.3f} over "
                  f"{st.n} seeds" + (", too few for a narrow one" if st.n < FEW_SEEDS else ""))
        else:
            ci = f"{st.n} seed, no interval"
        text = f"Best {name}: <strong>{_e(best.label)}</strong> {st.mean:.3f} ({ci})."
        if majority is not None and key in majority[1] and st.mean is not None \
                and st.mean <= majority[1][key] + 1e-9:
            text += (f" No better than always answering {_e(majority[0])}, the test split's "
                     "majority class: no model has learnt this score.")
        pairs = [c for c in comparisons if c.metric == key
                 and best.label in (c.model_a, c.model_b)]
        if pairs:
            tied = sorted({c.model_b if c.model_a == best.label else c.model_a
                           for c in pairs if not c.real})
            if tied:
                group = [r for r in scored if r.label in {best.label, *tied}]
                text += (f" The paired bootstrap does not separate it from {_e(', '.join(tied))}"
                         " (the interval of the difference holds 0).")
                small = min(group, key=lambda r: _stat(r, "params_total").mean or 0)
                if _stat(small, "params_total").mean is not None:
                    text += (f" Smallest of these: {_e(small.label)} "
                             f"({_stat(small, 'params_total').mean:,.0f} parameters).")
                if fastest is not None:
                    k, what = fastest
                    quick = min(group, key=lambda r: _stat(r, k).mean or 0.0)
                    text += (f" Fastest: {_e(quick.label)} ({_stat(quick, k).mean:.2f} ms "
                             f"{what}).")
            else:
                text += " Its lead over every other model holds beyond the 95% interval."
        elif len(scored) > 1:
            text += " (Not compared pairwise: no stored test predictions.)"
        items.append(f"<li>{text}</li>")
    if majority is not None and items:
        name, got = majority
        parts = [f"{label} {got[k]:.3f}" for k, label in
                 (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                  ("sensitivity", "sensitivity"), ("specificity", "specificity")) if k in got]
        items.append(f"<li>For scale: always answering {_e(name)} (the test split's majority "
                     f"class) scores {_e(', '.join(parts))}.</li>")
    if not items:
        return ("<section id='summary'><h2>Summary</h2><p>No finished trial: nothing to "
                "summarise yet.</p></section>")
    return ("<section id='summary'><h2>Summary</h2><ul>" + "".join(items) + "</ul><p>Scores "
            "on the test split, mean over seeds; the interval is the Student t 95% interval "
            "of that mean (see the <a href='#glossary'>glossary</a>); "
            "<a href='#differences'>which differences are real</a> below.</p></section>")


GLOSSARY = (
    ("Accuracy", "the fraction of test images classified right."),
    ("Balanced accuracy", "the mean over classes of each class's recall: on a test split of "
     "62.5% positives, always answering positive scores 0.625 accuracy but 0.5 balanced "
     "accuracy."),
    ("Sensitivity", "of the images of the positive class, the fraction predicted positive "
     "(recall, true positive rate)."),
    ("Specificity", "of the images of the negative class, the fraction predicted negative "
     "(true negative rate)."),
    ("AUC", "area under the ROC curve: the probability that a random positive image scores "
     "above a random negative one (0.5 is chance, 1 perfect); it does not depend on the "
     "threshold."),
    ("Threshold (operating point)", "the positive-class probability from which an image is "
     "called positive, chosen on the validation split; the marker on each ROC curve."),
    ("ECE", "expected calibration error: the mean gap between confidence and accuracy over "
     "15 confidence bins, weighted by the images in each bin; 0 means a stated 80% is right "
     "80% of the time."),
    ("MACs", "multiply-accumulate operations for one image: the arithmetic cost of a "
     "prediction, independent of the hardware."),
    ("ORT", "ONNX Runtime, the inference engine that runs the exported model file."),
    ("95% interval", "over seeds: mean ± t·std/√n (Student t), clipped to 0–1; in the "
     "differences: the 2.5th–97.5th percentile of a paired bootstrap."),
    ("Majority class", "the score of always answering the test split's most frequent class: "
     "the line a model must beat on the accuracy, sensitivity and specificity charts."),
)


def glossary_html() -> str:
    return ("<h2 id='glossary'>Glossary</h2><dl class='glossary'>" + "".join(
        f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in GLOSSARY) + "</dl>")


def diagnoses_html(rows: Sequence[Row]) -> str:
    """The diagnoses behind the collapsed-runs flags, right below the table they explain."""
    lines = diagnosis_lines(list(rows))
    if not lines:
        return ""
    return (f"<div class='notes' id='diagnoses'><strong>{DIAGNOSED} Diagnosis of collapsed or "
            "near-chance trials</strong><ul>" + "".join(f"<li>{_e(d)}</li>" for d in lines)
            + "</ul></div>")


def failures_table(run: RunData) -> str:
    if not run.failed and not run.unfinished:
        return "<p>Every planned trial finished.</p>"
    rows = []
    for t in [*run.failed, *run.unfinished]:
        err = t.get("error") or ("not finished yet" if t["status"] != "failed" else "")
        rows.append(f"<tr><td>{_e(sized_model(t))}</td><td class='num'>{_e(t['seed'])}</td>"
                    f"<td>{_e(t['protocol'])}</td><td>{_e(t['status'])}</td>"
                    f"<td class='num'>{_e(t.get('attempts'))}</td>"
                    f"<td><pre>{_e(err)}</pre></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in
                   ("Model", "Seed", "Protocol", "Status", "Attempts", "Error"))
    return f"<table id='failures'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>" \
           "</table>"


# The report's note for a model whose Grad-CAM maps are all too coarse to draw
# (report.figures): shown in the Grad-CAM section, where the figure would be.
CAM_NOTE = ": no Grad-CAM figure: "


def figures_html(figures: Sequence[FigureSpec], png: dict[str, bytes],
                 svg_written: bool, cam_notes: Sequence[str] = ()) -> str:
    parts = []
    for section, title in SECTIONS:
        members = [f for f in figures if f.section == section]
        said = list(cam_notes) if section == "cam" else []
        if not members and not said:
            continue
        parts.append(f"<h3>{_e(title)}</h3>")
        parts += [f"<p class='cam-note'>{_e(n)}</p>" for n in said]
        for f in members:
            data = base64.b64encode(png[f.name]).decode("ascii")
            link = (f" <a href='figures/{_e(f.name)}.svg'>SVG</a>" if svg_written else "")
            parts.append(
                f"<figure id='fig-{_e(f.name)}'><img alt='{_e(f.caption)}' "
                f"src='data:image/png;base64,{data}'>"
                f"<figcaption>{_e(f.caption)}{link}</figcaption></figure>")
    return "\n".join(parts) if parts else "<p>No figures: no finished trials.</p>"


def ensembles_html(items: Sequence[Ensemble]) -> str:
    if not items:
        return ""
    head = ("<tr><th scope='col'>Model</th><th scope='col'>Seeds</th><th scope='col'>Total "
            "params (all members)</th><th scope='col'>Accuracy (members' mean)</th>"
            "<th scope='col'>AUC</th><th scope='col'>Sensitivity</th><th scope='col'>"
            "Specificity</th><th scope='col'>ECE</th></tr>")

    def num(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}"

    body = "".join(
        f"<tr><th scope='row' class='label'>{label_html(e.group.label)}</th>"
        f"<td class='num'>{len(e.seeds)}</td>"
        f"<td class='num'>{e.params_total:,}</td><td class='num'>"
        f"{num(e.metrics.get('accuracy'))} ({e.member_accuracy:.4f})</td>"
        + "".join(f"<td class='num'>{num(e.metrics.get(k))}</td>"
                  for k in ("auc", "sensitivity", "specificity", "ece"))
        + "</tr>" for e in items)
    return ("<h3 id='ensembles'>Seed ensembles</h3><div class='scroll'><table>"
            f"<thead>{head}</thead><tbody>{body}</tbody></table></div><p>Each model's seeds' "
            "test probabilities averaged into one prediction (the members' mean threshold, "
            "else the most probable class); its parameters are all its members'. In "
            "<a href='ensembles.csv'>ensembles.csv</a> with every score.</p>")


def comparisons_html(comps: Sequence[Comparison], n_boot: int) -> str:
    """One row per pair of models: the difference of each score over its 95% interval, in
    bold where the interval excludes 0."""
    if not comps:
        return "<p>Fewer than two models with stored test predictions: nothing to compare.</p>"
    metrics = list(dict.fromkeys(c.metric for c in comps))
    names = {"accuracy": "accuracy", "auc": "AUC", "balanced_accuracy": "balanced accuracy"}
    pairs: dict[tuple[str, str], dict[str, Comparison]] = {}
    for c in comps:
        pairs.setdefault((c.model_a, c.model_b), {})[c.metric] = c
    head = "".join(f"<th scope='col'>Δ {_e(names.get(m, m))} (A − B) [95% interval]</th>"
                   f"<th scope='col'>p (Holm)</th>" for m in metrics)
    body = []
    first = metrics[0]

    def size(item: tuple[tuple[str, str], dict[str, Comparison]]) -> float:
        c = item[1].get(first)
        return -abs(c.difference) if c is not None else 0.0

    # Largest differences of the first score first: the ones a reader came for.
    for (a, b), by_metric in sorted(pairs.items(), key=size):
        cells = []
        for m in metrics:
            cm = by_metric.get(m)
            if cm is None:
                cells.append("<td class='num'>—</td><td class='num'>—</td>")
                continue
            text = (f"<span class='nowrap'>{cm.difference:+.4f}</span> <span class='nowrap'>"
                    f"[{cm.low:+.4f}, {cm.high:+.4f}]</span>")
            cells.append(f"<td class='num diff'>"
                         f"{f'<strong>{text}</strong>' if cm.real else text}"
                         f"</td><td class='num'>{cm.p_holm:.3f}</td>")
        body.append(f"<tr><th scope='row' class='label'>{label_html(a)}</th>"
                    f"<td class='name label'>{label_html(b)}</td>"
                    f"{''.join(cells)}</tr>")
    return (f"<div class='scroll'><table id='comparisons'><thead><tr><th scope='col'>Model A"
            f"</th><th scope='col'>Model B</th>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table></div><p>Paired bootstrap over the test images ({n_boot:,} "
            "replicates, the same images for both models, each model's seeds drawn with "
            "replacement), sorted by the size of the first difference. "
            "<strong>Bold</strong>: the interval excludes 0, so the difference "
            "is unlikely to be noise of the test sample or of the seeds, for that pair alone. "
            "p (Holm): the bootstrap p-value of no difference, adjusted by Holm's method "
            f"across {_e(holm_family_text(comps, names))}. "
            f"{_e(distinguishable_sentence(comps))} All numbers in "
            "<a href='comparisons.csv'>comparisons.csv</a>.</p>")


def data_html(data: dict[str, Any]) -> str:
    if not data:
        return "<p>Not recorded.</p>"
    ident = data.get("identity") or {}
    classes = data.get("classes") or []
    pos = data.get("positive_class")
    pos_name = classes[pos] if isinstance(pos, int) and 0 <= pos < len(classes) else pos
    size = data.get("image_size")
    out = [_kv_table([
        ("Name", data.get("name")),
        ("Source", data.get("source") or ident.get("source")),
        ("SHA-256", ident.get("sha256") or data.get("sha256")),
        ("Kind", ident.get("kind")),
        ("Cache key", ident.get("cache_key")),
        ("Classes", ", ".join(str(c) for c in classes)),
        ("Positive class", pos_name),
        ("Image size (C × H × W)", " × ".join(str(s) for s in size)
         if isinstance(size, list) else size),
        ("Patient grouping", data.get("patient_grouping")),
        ("Patients in more than one split", data.get("patient_overlap")),
    ])]
    splits = data.get("splits")
    if isinstance(splits, dict) and splits:
        seen = {c for counts in splits.values() if isinstance(counts, dict) for c in counts}
        # The dataset's class order first, then any other name the counts use.
        names = [c for c in classes if c in seen] + sorted(seen - set(classes))
        head = "".join(f"<th>{_e(c)}</th>" for c in ["Split", *names, "Total"])
        body = []
        for split in ("train", "val", "test", *sorted(set(splits) - {"train", "val", "test"})):
            counts = splits.get(split)
            if not isinstance(counts, dict):
                continue
            cells = "".join(f"<td class='num'>{_e(counts.get(c, 0))}</td>" for c in names)
            total = sum(v for v in counts.values() if isinstance(v, int))
            body.append(f"<tr><th scope='row'>{_e(split)}</th>{cells}"
                        f"<td class='num'>{total}</td></tr>")
        out.append(f"<table id='splits'><thead><tr>{head}</tr></thead>"
                   f"<tbody>{''.join(body)}</tbody></table>")
    notes = data.get("notes") or []
    if notes:
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    out.append(f"<details><summary>Full data record</summary>{_pre(data)}</details>")
    return "\n".join(out)


def environment_html(env: dict[str, Any], run: RunData) -> str:
    devices = sorted({str((t.get("extra") or {}).get("device")) for g in run.groups
                      for t in g.done if (t.get("extra") or {}).get("device")})
    items = sorted((k, json.dumps(v) if isinstance(v, dict | list) else v)
                   for k, v in env.items())
    if devices:
        items.append(("devices used by the trials", ", ".join(devices)))
    return _kv_table(items)


def _few_seeds_html(rows: Sequence[Row]) -> str:
    few = sorted({len(r.group.done) for r in rows if 2 <= len(r.group.done) < FEW_SEEDS})
    if not few:
        return ""
    return (f"<br><span id='few-seeds'>With {' or '.join(map(str, few))} seeds (n &lt; "
            f"{FEW_SEEDS}) the 95% intervals are wide: the t quantile alone is 12.7 at n=2. "
            "Intervals of scores are clipped to 0–1 here and in every file.</span>")


def page(run: RunData, rows: Sequence[Row], notes: Sequence[str],
         figures: Sequence[FigureSpec], png: dict[str, bytes], svg_written: bool,
         comparisons: Sequence[Comparison] = (), n_boot: int = 0,
         ensembles: Sequence[Ensemble] = (), curve_section: str = "") -> str:
    from lightlayers.version import __version__

    meta = run.meta
    c = run.counts
    names = [p.name for p in run.sources] or [run.run_dir.name]
    title = f"lightlayers report: {' + '.join(names)}"
    summary = (f"{sum(c.values())} trials: {c.get('done', 0)} done, {c.get('failed', 0)} "
               f"failed, {c.get('pending', 0) + c.get('running', 0)} not finished. "
               f"{len(run.groups)} model(s), up to {run.max_seeds} seed(s) each.")
    # The ledger's sentence goes beside the table, not among the notes on partial results.
    from lightlayers.ledger import ledger_sentence

    ledger = ledger_sentence(meta.get("data_fingerprint"))
    from lightlayers.report.table import settings_sentence

    # Said under the title: how the models were trained, not a partial result.
    settings = settings_sentence(meta)
    cam_notes = [n for n in notes if CAM_NOTE in n]
    notes = [n for n in notes if n not in (ledger, settings) and CAM_NOTE not in n]
    notes_html = ("<div class='notes'><strong>Partial results</strong><ul>"
                  + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>") if notes else ""
    marked = any(r.group.incomplete for r in rows)
    config = meta.get("config")
    protocol = meta.get("protocol")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
{summary_html(rows, comparisons, majority_scores(run))}
<p>{_e(summary)}</p>
<p id="settings-source">{_e(settings)}</p>
{notes_html}
<h2 id="table">Results</h2>
{results_table(rows, diagnoses_html(rows))}
<p>Metrics: mean ± sample standard deviation over seeds (95% t-intervals in
<a href="table.csv">table.csv</a>). Accuracy, AUC, sensitivity, specificity and F1 on the test
split; times are wall clock; MACs per image; size of the float32 weights file (MB = 10⁶ bytes).
{"<br>* fewer finished seeds than planned or than the other models." if marked else ""}
{_few_seeds_html(rows)}</p>
{f"<p id='test-ledger'>{_e(ledger)}</p>" if ledger else ""}
{ensembles_html(ensembles)}
<h2 id="differences">Which differences are real</h2>
{comparisons_html(comparisons, n_boot)}
{f'<h2 id="learning-curve">Learning curves</h2>{chr(10)}{curve_section}' if curve_section else ""}
<h2 id="failures">Failed and unfinished trials</h2>
{failures_table(run)}
<h2 id="figures">Figures</h2>
{figures_html(figures, png, svg_written, cam_notes)}
{glossary_html()}
<h2 id="data">Data</h2>
{data_html(meta.get("data") or {})}
<h2 id="config">Configuration</h2>
{_pre(config) if config else "<p>Not recorded.</p>"}
{("<h3>Resolved protocol</h3>" + _pre(protocol)) if protocol else ""}
<h2 id="environment">Environment</h2>
{environment_html(meta.get("environment") or {}, run)}
<hr>
<p><small>Written by lightlayers {_e(__version__)} from
{_e(", ".join(str(p / "results.db") for p in (run.sources or (run.run_dir,))))}.
</small></p>
<script>{SCRIPT}</script>
</body>
</html>
"""
