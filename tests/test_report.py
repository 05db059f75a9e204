"""The report: statistics, table files, figures, HTML page (opened in headless Chromium),
partial runs and errors, on stores filled with real classifier runs (report_fixtures)."""

import base64
import csv
import io
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fixtures import browser_check, build_store

from lightlayers.cli import main as cli
from lightlayers.outputs import MANIFEST
from lightlayers.report import FORMATS, ReportError, write_report
from lightlayers.report.figures import criterion_chart, use_log
from lightlayers.report.load import Group
from lightlayers.report.source import SOURCE_FILE
from lightlayers.report.stats import pareto_front, summarize
from lightlayers.report.table import Row
from lightlayers.runfolder.store import ResultsStore

MODELS = ("linear-8x8", "linear-4x4")
# Student t, 97.5% quantile, from printed tables: df -> t.
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}
STUDY_HEADERS = ("Model", "Total params", "Trainable params", "Size", "Accuracy",
                 "Total time (s)", "Time per epoch (s)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A complete run (2 models x 3 seeds) and its report, written once."""
    run_dir = build_store(tmp_path_factory.mktemp("report") / "run")
    result = write_report(run_dir, console=False)
    return run_dir, result


def _csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# --- statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", sorted(T975))
def test_summary_is_numpy_mean_std_and_t_interval(n):
    values = list(np.random.default_rng(n).normal(0.8, 0.05, n + 1))
    s = summarize([*values, None, float("nan")])  # missing values are left out
    assert s.n == n + 1
    assert s.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert s.std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    half = T975[n] * np.std(values, ddof=1) / math.sqrt(n + 1)
    assert s.mean - s.ci_low == pytest.approx(half, rel=2e-4)
    assert s.ci_high - s.mean == pytest.approx(half, rel=2e-4)
    assert (s.min, s.max) == (min(values), max(values))


def test_summary_of_one_or_no_value_has_no_spread():
    one = summarize([0.5])
    assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 0.5, None, None, None)
    assert summarize([None]).mean is None


def test_pareto_front_on_a_known_set():
    params = [2753, 4600, 6447, 31074, 10141, 2753]
    acc = [0.80, 0.78, 0.85, 0.85, 0.90, 0.70]
    # 4600 loses to 2753/0.80; 31074 loses to 10141/0.90; the second 2753 to the first.
    assert pareto_front(params, acc) == [0, 2, 4]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1], [])


def test_log_scale_when_values_span_more_than_50x():
    assert use_log([100, 6000]) and not use_log([100, 4000]) and not use_log([0, 1e6])
    groups = [Group(f"m{i}", f"m{i}", "seed", done=[{"params_total": p}])
              for i, p in enumerate((2753, 21_785_568))]
    rows = [Row(g, {"params_total": summarize([g.done[0]["params_total"]])}, 0) for g in groups]
    fig = criterion_chart(rows, "params_total", "Total parameters (count)", "Total parameters")
    assert fig.axes[0].get_yscale() == "log"
    assert "log scale" in fig.axes[0].get_ylabel()


# --- table files ----------------------------------------------------------------------------
def test_table_csv_holds_mean_std_and_ci_of_the_stored_values(run):
    run_dir, _ = run
    rows = {r["model"]: r for r in _csv_rows(run_dir / "report" / "table.csv")}
    assert list(rows) == list(MODELS)
    with ResultsStore(run_dir / "results.db", create=False) as store:
        trials = store.trials(status="done")
    for model in MODELS:
        row = rows[model]
        assert (row["n_seeds"], row["seeds"], row["incomplete"]) == ("3", "0 1 2", "0")
        for key in ("accuracy", "auc", "f1", "total_time_s", "params_total"):
            vals = np.array([t[key] for t in trials if t["model"] == model], dtype=float)
            mean, std = vals.mean(), vals.std(ddof=1)
            assert float(row[f"{key}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(std, rel=1e-9, abs=1e-15)
            half = T975[2] * std / math.sqrt(3)
            # The half-width, compared relatively (the table's t has 4 digits).
            low, high = float(row[f"{key}_ci95_low"]), float(row[f"{key}_ci95_high"])
            assert mean - low == pytest.approx(half, rel=2e-4, abs=1e-12)
            assert high - mean == pytest.approx(half, rel=2e-4, abs=1e-12)
            assert row[f"{key}_n"] == "3"
        collapsed = sum(t["collapsed"] for t in trials if t["model"] == model)
        assert row["collapsed_runs"] == str(collapsed)
    # Real classifiers: the full-resolution one has 65 weights and beats the pooled one.
    assert rows["linear-8x8"]["params_total_mean"] == "65.0"
    assert float(rows["linear-8x8"]["accuracy_mean"]) > float(rows["linear-4x4"]["accuracy_mean"])


def test_table_md_has_the_study_columns_and_mean_pm_std(run):
    run_dir, _ = run
    lines = (run_dir / "report" / "table.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header[:7]) == STUDY_HEADERS
    assert header[7:] == ["AUC", "Sensitivity", "Specificity", "F1", "MACs",
                          "Inference (img/s)", "ECE", "Seeds", "Collapsed runs"]
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [b.split("|")[1].strip() for b in body] == list(MODELS)
    rows = {r["model"]: r for r in _csv_rows(run_dir / "report" / "table.csv")}
    cells = [c.strip() for c in body[0].strip("|").split("|")]
    acc = rows["linear-8x8"]
    assert cells[4] == f"{float(acc['accuracy_mean']):.4f} ± {float(acc['accuracy_std']):.4f}"
    assert cells[1] == "65"  # parameters do not vary over seeds: no "± 0"
    assert cells[-2:] == ["3", "0"]


def test_console_table(tmp_path, capsys):
    run_dir = build_store(tmp_path / "run", seeds=(0,), epochs=2)
    write_report(run_dir, formats=("csv",))
    out = capsys.readouterr().out
    assert "Params" in out and "linear-8x8" in out and "linear-4x4" in out
    # Only what was asked for is written.
    assert sorted(p.name for p in (run_dir / "report").iterdir()) == sorted([
        SOURCE_FILE, MANIFEST, "comparisons.csv", "table.csv"])


def test_console_prints_the_confidence_interval_of_each_model(tmp_path, capsys):
    run_dir = build_store(tmp_path / "run", seeds=(0, 1, 2), epochs=2)
    write_report(run_dir, formats=("csv",))
    out = capsys.readouterr().out
    assert "95% Student-t interval" in out
    lines = out.splitlines()
    for row in _csv_rows(run_dir / "report" / "table.csv"):
        at = lines.index(f"  {row['model']}, {row['n_seeds']} seeds")
        mean, std, low, high = (float(row[f"accuracy_{k}"])
                                for k in ("mean", "std", "ci95_low", "ci95_high"))
        assert 0 <= low <= high <= 1  # table.csv's interval is the printed one, within [0, 1]
        assert lines[at + 1].split() == ["accuracy", f"{mean:.4f}", "±", f"{std:.4f}",
                                         f"[{low:.4f},", f"{high:.4f}]"]


def test_printed_interval_stays_within_0_and_1():
    from lightlayers.metrics.registry import get_metric
    from lightlayers.report.table import ci_keys, ci_lines, clipped

    CI_KEYS = ci_keys()

    # Two seeds far apart: the raw t-interval is about [-4.2, 5.4].
    scores = {key: summarize([0.2, 0.99]) for key, _ in CI_KEYS}
    assert scores["accuracy"].ci_low < -1 and scores["accuracy"].ci_high > 2
    scores = {key: clipped(s, get_metric(key)) for key, s in scores.items()}
    group = Group("m", "m", "seed", done=[{"seed": 0}, {"seed": 1}])
    head, *lines = ci_lines([Row(group, scores, 0)])
    assert head == "  m, 2 seeds (n=2: interval wide)"
    assert lines[0].split() == ["accuracy", "0.5950", "±", "0.5586", "[0.0000,", "1.0000]"]
    assert sum("[0.0000, 1.0000]" in line for line in lines) == len(CI_KEYS)
    # One seed: no spread, no interval, no line.
    assert ci_lines([Row(Group("n", "n", "seed", done=[{"seed": 0}]),
                         {key: summarize([0.5]) for key, _ in CI_KEYS}, 0)]) == []


# --- figures ---------------------------------------------------------------------------------
def test_figures_cover_every_criterion_model_and_format(run):
    run_dir, result = run
    fig_dir = run_dir / "report" / "figures"
    stems = {"criterion_params_total", "criterion_params_trainable", "criterion_size_mb",
             "criterion_accuracy", "criterion_total_time_s", "criterion_epoch_time_s",
             "criterion_sensitivity", "criterion_specificity",
             "accuracy_vs_params", "roc", "reliability",
             *(f"history_{m}" for m in MODELS), *(f"confusion_{m}" for m in MODELS)}
    assert {p.name for p in fig_dir.iterdir()} == {f"{s}.{e}" for s in stems for e in ("png",
                                                                                       "svg")}
    for stem in stems:
        with Image.open(fig_dir / f"{stem}.png") as im:
            assert im.width > 300 and im.height > 200
        ET.parse(fig_dir / f"{stem}.svg")  # well-formed XML
    assert set(result.files) == {*fig_dir.iterdir(), run_dir / "report" / "table.csv",
                                 run_dir / "report" / "comparisons.csv",
                                 run_dir / "report" / "ensembles.csv",
                                 run_dir / "report" / "table.md",
                                 run_dir / "report" / "report.html"}


def test_rerun_writes_byte_identical_files(run):
    run_dir, first = run
    before = {p: p.read_bytes() for p in first.files}
    again = write_report(run_dir, console=False)
    assert again.files == first.files
    changed = [p.name for p in again.files if p.read_bytes() != before[p]]
    assert changed == []


def test_multiclass_run_gets_micro_average_roc_and_full_confusion(tmp_path):
    run_dir = build_store(tmp_path / "run", task="multi", seeds=(0, 1), epochs=2)
    result = write_report(run_dir, formats=("svg", "csv"), console=False)
    names = {p.name for p in result.files}
    assert "roc.svg" in names and "confusion_linear-8x8.svg" in names
    # matplotlib keeps each text as an SVG comment next to its glyph paths.
    svg = (run_dir / "report" / "figures" / "roc.svg").read_text()
    assert "<!-- ROC on the test split (micro-average one-vs-rest; mean over seeds) -->" in svg
    assert "positive class" not in svg
    with ResultsStore(run_dir / "results.db", create=False) as store:
        cms = [np.array(t["confusion"]) for t in store.trials() if t["model"] == "linear-8x8"]
    assert np.sum(cms, axis=0).shape == (3, 3)


# --- HTML -------------------------------------------------------------------------------------
class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))


def test_html_is_self_contained_with_config_environment_and_data(run):
    run_dir, result = run
    text = result.html.read_text()
    parser = _Imgs()
    parser.feed(text)
    pngs = sorted(p.read_bytes() for p in (run_dir / "report" / "figures").glob("*.png"))
    assert pngs and parser.links == []
    assert all(src.startswith("data:image/png;base64,") for src in parser.srcs)
    # Every figure is embedded, byte for byte the PNG written next to the page.
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in parser.srcs) == pngs
    assert not re.search(r"(src|href)=['\"]https?:", text)
    assert "ab" * 32 in text  # data checksum
    assert "sklearn.datasets.load_digits" in text and "test cpu" in text
    assert "epochs: 4" in text  # resolved config
    assert re.search(r"\d{4}-\d{2}-\d{2}", text) is None  # no dates


def test_report_html_loads_in_headless_chromium(run, tmp_path):
    run_dir, result = run
    attrs = browser_check(result.html, tmp_path)
    n_png = len(list((run_dir / "report" / "figures").glob("*.png")))
    assert attrs.get("data-images-ok") == f"{n_png}/{n_png}"
    assert attrs.get("data-table-rows") == str(len(MODELS))
    # At 1280 px nothing hides behind a sideways scroll, and the page opens with its answer.
    assert attrs["data-window-width"] == "1280"
    assert int(attrs["data-scroll-width"]) <= 1280
    assert attrs["data-first-section"] == "summary"
    # A header wraps between its words only ("Seeds" never as "Seed" / "s").
    assert attrs["data-broken-headers"] == "", attrs["data-broken-headers"]
    assert attrs["data-broken-numbers"] == "", attrs["data-broken-numbers"]
    assert attrs["data-overflowing-tables"] == "", attrs["data-overflowing-tables"]


def test_page_leads_with_a_summary_made_from_the_numbers(run):
    _, result = run
    html = result.html.read_text()
    body = html.split("<body>", 1)[1]
    assert body.index("id='summary'") < body.index("id=\"table\"")
    summary = html.split("id='summary'")[1].split("</section>")[0]
    rows = {r.label: r for r in result.rows}
    best = max(rows, key=lambda m: rows[m].stats["accuracy"].mean)
    st = rows[best].stats["accuracy"]
    assert (f"Best accuracy: <strong>{best}</strong> {st.mean:.3f} (95% interval "
            f"{max(0.0, st.ci_low):.3f}–{min(1.0, st.ci_high):.3f} over 3 seeds)") in summary
    assert "Best balanced accuracy:" in summary and "Best AUC:" in summary
    assert "majority class" in summary


def test_tables_are_grouped_glossary_and_long_errors_wrap(run):
    _, result = run
    html = result.html.read_text()
    for table_id in ("results", "results-calibration", "results-cost"):
        assert f"id='{table_id}'" in html
    # No table carries more than a page's worth of columns.
    for head in re.findall(r"<thead><tr>(.*?)</tr></thead>", html):
        assert head.count("<th") <= 10
    glossary = html.split("id='glossary'")[1].split("</dl>")[0]
    for term in ("ECE", "MACs", "ORT", "Balanced accuracy", "Sensitivity", "Specificity",
                 "AUC", "95% interval"):
        assert f"<dt>{term}</dt>" in glossary
    assert "white-space: pre-wrap; overflow-wrap: anywhere" in " ".join(html.split())


def test_majority_line_operating_points_and_bin_counts(run):
    run_dir, result = run
    captions = {f.split("id='fig-")[1].split("'")[0]: f for f in
                result.html.read_text().split("<figure ")[1:]}
    for key in ("accuracy", "sensitivity", "specificity"):
        assert "majority class, scores" in captions[f"criterion_{key}"]
    assert "operating point" in captions["roc"]
    assert "images in each confidence bin" in captions["reliability"]
    svg = (run_dir / "report" / "figures" / "criterion_accuracy.svg")
    assert svg.is_file()


# --- partial runs and errors ------------------------------------------------------------------
def test_partial_run_lists_failures_and_marks_models_with_fewer_seeds(tmp_path):
    run_dir = build_store(
        tmp_path / "run", models=("linear-8x8", "linear-4x4", "linear-2x2"), seeds=(0, 1),
        epochs=2, failed={("linear-4x4", 1): "RuntimeError: boom at epoch 3"},
        pending=[("linear-2x2", 0), ("linear-2x2", 1)])
    result = write_report(run_dir, formats=("html", "md", "csv"), console=False)
    assert [t["error"] for t in result.failed] == ["RuntimeError: boom at epoch 3"]
    md = (run_dir / "report" / "table.md").read_text()
    assert "| linear-8x8 |" in md and "| linear-4x4* |" in md and "| linear-2x2* |" in md
    assert "linear-4x4: 1 of 2 seeds finished (missing seeds: 1)" in md
    assert "failed: linear-4x4 seed 1 (seed): RuntimeError: boom at epoch 3" in md
    assert "not finished yet" in md and "linear-2x2 seed 0" in md
    rows = {r["model"]: r for r in _csv_rows(run_dir / "report" / "table.csv")}
    assert {m: r["incomplete"] for m, r in rows.items()} == {
        "linear-8x8": "0", "linear-4x4": "1", "linear-2x2": "1"}
    assert rows["linear-2x2"]["accuracy_mean"] == "" and rows["linear-2x2"]["n_seeds"] == "0"
    html = result.html.read_text()
    results = html.split("id='results'")[1].split("</table>")[0]
    assert results.count("<tr class='incomplete'") == 2
    failures = html.split("id='failures'")[1].split("</table>")[0]
    assert failures.count("<tr><td>") == 3 and "boom at epoch 3" in failures
    # No figure for a model that never finished.
    assert "linear-2x2" not in "".join(re.findall(r"id='fig-[^']*'", html))


def test_run_with_nothing_finished_still_reports(tmp_path):
    run_dir = build_store(tmp_path / "run", seeds=(0,), pending=[(m, 0) for m in MODELS])
    result = write_report(run_dir, formats=("html", "md"), console=False)
    assert "No figures: no finished trials." in result.html.read_text()
    assert "2 trial(s) not finished yet" in (run_dir / "report" / "table.md").read_text()


def test_missing_or_empty_run_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(ReportError, match=r"nowhere does not exist.*lightlayers run --out"):
        write_report(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty holds no results.*lightlayers run --out"):
        write_report(tmp_path / "empty")
    ResultsStore(tmp_path / "fresh" / "results.db").close()
    with pytest.raises(ReportError, match=r"fresh holds no trials yet.*lightlayers run --out"):
        write_report(tmp_path / "fresh")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.db").write_text("not a database")
    with pytest.raises(ReportError, match="cannot read the results of"):
        write_report(tmp_path / "bad")
    assert cli(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"run folder {missing} does not exist" in err and "lightlayers run --out" in err
    assert "Traceback" not in err


def test_cli_formats(run, capsys):
    run_dir, _ = run
    assert cli(["report", str(run_dir), "--format", "csv,md", "--quiet"]) == 0
    # table.csv, comparisons.csv, ensembles.csv (3 seeds each), table.md
    assert "4 files in" in capsys.readouterr().err
    assert cli(["report", str(run_dir), "--format", "html,pdf"]) == 2
    assert "unknown report format(s) ['pdf']" in capsys.readouterr().err
    assert FORMATS == ("html", "md", "csv", "png", "svg")


def test_several_protocols_get_one_row_each(tmp_path, capsys):
    run_dir = build_store(tmp_path / "run", seeds=(0,), epochs=2, protocols=("seed", "improved"))
    result = write_report(run_dir, formats=("csv", "md"))
    labels = [r.label for r in result.rows]
    assert labels == ["linear-8x8 [seed]", "linear-4x4 [seed]", "linear-8x8 [improved]",
                      "linear-4x4 [improved]"]
    rows = _csv_rows(run_dir / "report" / "table.csv")
    assert [(r["model"], r["protocol"]) for r in rows] == [
        ("linear-8x8", "seed"), ("linear-4x4", "seed"), ("linear-8x8", "improved"),
        ("linear-4x4", "improved")]
    # rich prints the labels as text: "[improved]" is not taken for a style tag.
    assert "linear-4x4 [improved]" in capsys.readouterr().out


def test_random_backbone_weights_are_labelled(tmp_path):
    import json
    import sqlite3

    from lightlayers.report.load import load_run

    run = build_store(tmp_path / "run", models=("linear-8x8", "linear-4x4"), seeds=(0,))
    with sqlite3.connect(run / "results.db") as c:
        c.execute("UPDATE trials SET extra=? WHERE model='linear-4x4'",
                  (json.dumps({"weights": "none"}),))
    labels = [g.label for g in load_run(run).groups]
    assert labels == ["linear-8x8", "linear-4x4 (weights: none)"]


def test_a_long_error_and_a_long_model_name_stay_within_1280_px(tmp_path):
    """A traceback line without spaces (a path, a tensor shape dump) and a long model label
    wrap instead of widening the page."""
    long_error = "RuntimeError: " + "/very/long/path/segment" * 80 + "\n" + "x" * 3000
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-4x4"), seeds=(0, 1),
                          epochs=2, failed={("linear-4x4", 1): long_error})
    result = write_report(run_dir, formats=("html",), console=False)
    attrs = browser_check(result.html, tmp_path)
    assert int(attrs["data-scroll-width"]) <= int(attrs["data-window-width"]) == 1280
    assert attrs["data-first-section"] == "summary"


def test_comparisons_of_three_scores_fit_1280_px_without_sideways_scrolling(tmp_path):
    """Three models under both protocols, labelled as the report labels them ("linear-8x8
    [improved]"), each pair compared on accuracy, AUC and balanced accuracy: every column of
    the differences table is in view at 1280 px, and no number breaks inside itself."""
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-4x4", "linear-2x2"),
                          seeds=(0, 1), epochs=2, protocols=("seed", "improved"))
    result = write_report(run_dir, formats=("html",), console=False)
    table = result.html.read_text().split("id='comparisons'")[1].split("</table>")[0]
    for score in ("accuracy", "AUC", "balanced accuracy"):
        assert f"Δ {score} (A − B)" in table
    assert table.count("<tr>") == 1 + 2 * 3  # the header, three pairs under each protocol
    assert ("<th scope='row' class='label'><span class='nowrap'>linear-8x8</span> "
            "<span class='nowrap'>[improved]</span></th>") in table
    assert_fits_1280(result.html, tmp_path)


def assert_fits_1280(html, tmp_path):
    """At 1280 px every table is in view, and no number or header broke inside itself."""
    attrs = browser_check(html, tmp_path)
    assert attrs["data-window-width"] == "1280"
    assert attrs["data-overflowing-tables"] == "", attrs["data-overflowing-tables"]
    assert attrs["data-broken-numbers"] == "", attrs["data-broken-numbers"]
    assert attrs["data-broken-headers"] == "", attrs["data-broken-headers"]
    assert int(attrs["data-scroll-width"]) <= 1280


def test_long_model_labels_fit_the_results_tables_at_1280_px(tmp_path):
    """The longest registered model names, under two protocols and with random backbone
    weights ("transfer-mobilenet_v3_large [improved] (weights: none)"): every table's columns
    are in view at 1280 px, the labels wrapping between name and qualifiers, never inside a
    number, a header or a qualifier. The trials are the fixture's linear classifiers; only
    their names and recorded weights are those of transfer models."""
    import json
    import sqlite3

    models = ("transfer-mobilenet_v3_large", "transfer-efficientnet_b0", "study-residual-conv")
    run_dir = build_store(tmp_path / "run", models=models, seeds=(0, 1), epochs=2,
                          protocols=("seed", "improved"))
    with sqlite3.connect(run_dir / "results.db") as c:
        c.execute("UPDATE trials SET extra=? WHERE model LIKE 'transfer-%'",
                  (json.dumps({"device": "cpu", "weights": "none"}),))
    result = write_report(run_dir, formats=("html",), console=False)
    assert "transfer-mobilenet_v3_large [improved] (weights: none)" in [
        r.label for r in result.rows]
    assert_fits_1280(result.html, tmp_path)
    results = result.html.read_text().split("id='results'")[1].split("</table>")[0]
    assert ("<th scope='row' class='label'><span class='nowrap'>transfer-mobilenet_v3_large"
            "</span> <span class='nowrap'>[improved]</span> <span class='nowrap'>(weights: "
            "none)</span></th>") in results
