"""``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS, no
network), reproducible byte for byte: no timestamps, sorted keys.

A tiny inline script records on ``<body>`` how many images decoded and how many table rows
exist, so a headless browser's dumped DOM says whether the page renders.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape
from typing import Any

from lightlayers.report.compare import Comparison
from lightlayers.report.ensemble import Ensemble
from lightlayers.report.figures import FigureSpec
from lightlayers.report.load import RunData
from lightlayers.report.table import DIAGNOSED, Row, columns, diagnosis_lines, headers

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
th, td { border: 1px solid #bbb; padding: .25em .5em; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; white-space: nowrap; }
tbody th { white-space: nowrap; text-align: left; }
tr.incomplete th { font-style: italic; }
.notes { border-left: 4px solid #555; background: #f4f4f4; padding: .5em 1em; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .85em; max-width: 60em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
.scroll { overflow-x: auto; }
"""

# Records the render check; it changes nothing visible.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = document.querySelectorAll("#results tbody tr").length;
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
  document.body.setAttribute("data-table-rows", String(rows));
});
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th scope='row'>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in items if v is not None and v != "")
    return f"<table>{body}</table>" if body else "<p>Not recorded.</p>"


def _pre(obj: Any) -> str:
    import yaml

    text = yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return f"<pre>{_e(text)}</pre>"


def results_table(rows: Sequence[Row]) -> str:
    head = "".join(f"<th scope='col'>{_e(h)}</th>" for h in headers(rows))
    cols = columns(rows)
    body = []
    for r in rows:
        cells = r.cells(cols=cols)
        cls = " class='incomplete'" if r.group.incomplete else ""
        tds = f"<th scope='row'>{_e(cells[0])}</th>" + "".join(
            f"<td class='num'>{_e(c)}</td>" for c in cells[1:])
        body.append(f"<tr{cls} data-model='{_e(r.label)}'>{tds}</tr>")
    return (f"<div class='scroll'><table id='results'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


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
        rows.append(f"<tr><td>{_e(t['model'])}</td><td class='num'>{_e(t['seed'])}</td>"
                    f"<td>{_e(t['protocol'])}</td><td>{_e(t['status'])}</td>"
                    f"<td class='num'>{_e(t.get('attempts'))}</td>"
                    f"<td><pre>{_e(err)}</pre></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in
                   ("Model", "Seed", "Protocol", "Status", "Attempts", "Error"))
    return f"<table id='failures'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>" \
           "</table>"


def figures_html(figures: Sequence[FigureSpec], png: dict[str, bytes],
                 svg_written: bool) -> str:
    parts = []
    for section, title in SECTIONS:
        members = [f for f in figures if f.section == section]
        if not members:
            continue
        parts.append(f"<h3>{_e(title)}</h3>")
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
        f"<tr><th scope='row'>{_e(e.group.label)}</th><td class='num'>{len(e.seeds)}</td>"
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
    """One row per pair of models: the difference of each score with its 95% interval, in
    bold where the interval excludes 0."""
    if not comps:
        return "<p>Fewer than two models with stored test predictions: nothing to compare.</p>"
    metrics = list(dict.fromkeys(c.metric for c in comps))
    names = {"accuracy": "accuracy", "auc": "AUC"}
    pairs: dict[tuple[str, str], dict[str, Comparison]] = {}
    for c in comps:
        pairs.setdefault((c.model_a, c.model_b), {})[c.metric] = c
    head = "".join(f"<th scope='col'>Δ {_e(names.get(m, m))} (A − B) [95% interval]</th>"
                   for m in metrics)
    body = []
    for (a, b), by_metric in pairs.items():
        cells = []
        for m in metrics:
            c = by_metric.get(m)
            if c is None:
                cells.append("<td class='num'>—</td>")
                continue
            text = _e(f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]")
            cells.append(f"<td class='num'>{f'<strong>{text}</strong>' if c.real else text}</td>")
        body.append(f"<tr><th scope='row'>{_e(a)}</th><td>{_e(b)}</td>{''.join(cells)}</tr>")
    return (f"<div class='scroll'><table id='comparisons'><thead><tr><th scope='col'>Model A"
            f"</th><th scope='col'>Model B</th>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table></div><p>Paired bootstrap over the test images ({n_boot:,} "
            "replicates, the same images for both models, each model's seeds drawn with "
            "replacement). <strong>Bold</strong>: the interval excludes 0, so the difference "
            "is unlikely to be noise of the test sample or of the seeds. All numbers in "
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


def page(run: RunData, rows: Sequence[Row], notes: Sequence[str],
         figures: Sequence[FigureSpec], png: dict[str, bytes], svg_written: bool,
         comparisons: Sequence[Comparison] = (), n_boot: int = 0,
         ensembles: Sequence[Ensemble] = ()) -> str:
    from lightlayers import __version__

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
    notes = [n for n in notes if n not in (ledger, settings)]
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
<p>{_e(summary)}</p>
<p id="settings-source">{_e(settings)}</p>
{notes_html}
<h2 id="table">Results</h2>
{results_table(rows)}
{diagnoses_html(rows)}
<p>Metrics: mean ± sample standard deviation over seeds (95% t-intervals in
<a href="table.csv">table.csv</a>). Accuracy, AUC, sensitivity, specificity and F1 on the test
split; times are wall clock; MACs per image; size of the float32 weights file (MB = 10⁶ bytes).
{"<br>* fewer finished seeds than planned or than the other models." if marked else ""}</p>
{f"<p id='test-ledger'>{_e(ledger)}</p>" if ledger else ""}
{ensembles_html(ensembles)}
<h2 id="differences">Which differences are real</h2>
{comparisons_html(comparisons, n_boot)}
<h2 id="failures">Failed and unfinished trials</h2>
{failures_table(run)}
<h2 id="figures">Figures</h2>
{figures_html(figures, png, svg_written)}
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
