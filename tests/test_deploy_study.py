"""A study's deployment numbers (``deployment: true``) and the report's Grad-CAM figures: real
runs, exported and timed as ``lightlayers export`` and ``make bench`` do."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightlayers.cli import main as cli
from lightlayers.deploy.bench import DEPLOYMENT_METRICS

RUN = ["run", "--data", "digits", "--seeds", "0", "--epochs", "2", "--size", "16", "--quiet",
       "--set", "bn_momentum=0.1", "--lr", "0.01"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    # A LightConv2d model, one epoch: timing does not need good weights (every family
    # exports in tests/test_deploy.py).
    assert cli([*RUN, "--models", "paper-light-k1", "--epochs", "1",
                "--deployment", "--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_trial_records_its_deployment_numbers(deployed: Path) -> None:
    rows = _rows(deployed / "results.csv")
    assert [(r["model"], r["seed"]) for r in rows] == [("paper-light-k1", "0")]
    for r in rows:
        values = {k: float(r[k]) for k in DEPLOYMENT_METRICS}  # every one recorded
        assert all(v > 0 for v in values.values()), values
        # int8 weights in a file that also holds the graph: smaller, not necessarily 4x.
        assert values["onnx_int8_mb"] < values["onnx_fp32_mb"]
        assert values["ort_latency_p95_ms"] >= values["ort_latency_ms"]
        assert values["torch_cpu_latency_p95_ms"] >= values["torch_cpu_latency_ms"]
    table = (deployed / "report" / "table.md").read_text().splitlines()[0]
    for header in ("| Size | int8 ONNX |", "ORT latency (ms)", "ORT int8 latency (ms)",
                   "PyTorch CPU latency (ms)"):
        assert header in table


def test_report_shows_where_each_model_looked(deployed: Path) -> None:
    html = (deployed / "report" / "report.html").read_text()
    assert (deployed / "report" / "figures" / "cam_paper-light-k1.png").is_file()
    assert "id='fig-cam_paper-light-k1'" in html
    assert "Where the models looked (Grad-CAM)" in html


def test_a_study_without_deployment_has_no_such_columns(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert cli([*RUN, "--models", "paper-light-k1", "--epochs", "1", "--out", str(out)]) == 0
    (row,) = _rows(out / "results.csv")
    assert all(row[k] == "" for k in DEPLOYMENT_METRICS)
    assert "ONNX" not in (out / "report" / "table.md").read_text().splitlines()[0]
