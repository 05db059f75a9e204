"""End to end: a real 2-model x 2-seed run on the chest X-ray data, then `lightlayers report`."""

import csv
import io

import pytest
from data_fixtures import pneumonia_subset
from report_fixtures import PNEUMONIA_NPZ, browser_check

from lightlayers.cli import main as cli
from lightlayers.runfolder.store import ResultsStore

MODELS = ("study-light-k1", "study-conv")


@pytest.mark.slow
def test_report_of_a_real_run(tmp_path):
    if not PNEUMONIA_NPZ.is_file():
        pytest.fail(f"shared test data not found at {PNEUMONIA_NPZ} (expected ../shared/data)")
    out = tmp_path / "run"
    # The whole official test split (234 NORMAL, 390 PNEUMONIA) and the first 600/150 images
    # of train/val: the report does not care how long the numbers took to train. Batch 256,
    # not the protocol's 64, for the same reason.
    data = pneumonia_subset(tmp_path / "pneumoniamnist_28_subset.npz", train=600, val=150,
                            test=624)
    rc = cli(["run", "--data", str(data), "--models", ",".join(MODELS),
              "--seeds", "0,1", "--epochs", "1", "--size", "28", "--batch-size", "256",
              "--out", str(out), "--quiet"])
    assert rc == 0
    report = out / "report"
    # `lightlayers run` wrote the report on its own; `lightlayers report` rewrites it unchanged.
    first = {p: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert report / "report.html" in first
    assert cli(["report", str(out)]) == 0
    again = {p: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert again.keys() == first.keys()
    assert [p.name for p in again if again[p] != first[p]] == []

    figures = {p.name for p in (report / "figures").iterdir()}
    stems = ["criterion_params_total", "criterion_params_trainable", "criterion_size_mb",
             "criterion_accuracy", "criterion_sensitivity", "criterion_specificity",
             "criterion_total_time_s", "criterion_epoch_time_s",
             "accuracy_vs_params", "roc",
             *(f"history_{m}" for m in MODELS), *(f"confusion_{m}" for m in MODELS)]
    assert {f"{s}.{ext}" for s in stems for ext in ("png", "svg")} <= figures

    rows = list(csv.DictReader(io.StringIO((report / "table.csv").read_text())))
    assert [r["model"] for r in rows] == list(MODELS)
    assert all(r["n_seeds"] == "2" for r in rows)
    # The published totals (DESIGN.md §4): 1847k + 906 for k = 1, and 31,074.
    assert [r["params_total_mean"] for r in rows] == ["2753.0", "31074.0"]
    md = (report / "table.md").read_text()
    assert all(f"| {m} |" in md for m in MODELS)

    html = (report / "report.html").read_text()
    with ResultsStore(out / "results.db", create=False) as store:
        meta = store.meta()
    # Data identity, environment and config as the study recorded them.
    assert meta["data"]["identity"]["sha256"] in html
    assert meta["environment"]["torch"] in html and "split_seed: 0" in html
    assert "<th scope='row'>test</th><td class='num'>234</td><td class='num'>390</td>" in html
    n_png = len([f for f in figures if f.endswith(".png")])
    attrs = browser_check(report / "report.html", tmp_path)
    assert attrs.get("data-images-ok") == f"{n_png}/{n_png}"
    assert attrs.get("data-table-rows") == "2"
    # A 1280 px window shows every table without a sideways scroll, from the summary down.
    assert int(attrs["data-scroll-width"]) <= int(attrs["data-window-width"]) == 1280
    assert attrs["data-first-section"] == "summary"
    # 390 of the 624 test images are PNEUMONIA: always answering it scores 0.625.
    assert "always answering pneumonia (the test split's majority class) scores accuracy " \
           "0.625" in html
    for key in ("accuracy", "sensitivity", "specificity"):
        caption = html.split(f"id='fig-criterion_{key}'")[1].split("</figcaption>")[0]
        assert "majority class, scores" in caption
    assert "id='glossary'" in html and "<dt>ECE</dt>" in html
