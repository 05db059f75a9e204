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


def test_trials_finished_without_deployment_numbers_are_measured_from_checkpoints(
        tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    from lightlayers.runfolder.store import ResultsStore

    out = tmp_path / "R"
    # Not quiet: the step's own line is part of what is checked.
    study = [*(a for a in RUN if a != "--quiet"), "--models", "paper-light-k1", "--epochs", "1",
             "--train-sizes", "0.5,1",
             "--threads", "1", "--out", str(out)]
    assert cli(study) == 0

    def trials() -> dict[str, dict]:
        with ResultsStore(out / "results.db", create=False) as store:
            return {t["key"]: t for t in store.trials()}

    before = trials()
    assert len(before) == 2 and all(t["ort_int8_latency_ms"] is None for t in before.values())
    # One checkpoint no longer what its trial wrote: that trial is named and left as it was.
    half = next(t for t in before.values() if t["config"].get("train_size"))
    (out / half["checkpoint"]).write_bytes(b"not the trial's weights")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="deployment numbers not measured") as warned:
        assert cli([*study, "--deployment"]) == 0
    assert "measuring the deployment numbers of 2 trial(s) finished without them" in (
        capsys.readouterr().err)
    (line,) = [str(w.message) for w in warned if "not measured" in str(w.message)]
    assert "paper-light-k1 seed 0" in line and "checkpoint" in line, line
    after = trials()
    assert after[half["key"]] == before[half["key"]]
    (whole_key,) = set(before) - {half["key"]}
    whole = after[whole_key]
    assert all(whole[k] > 0 for k in DEPLOYMENT_METRICS), whole
    # What the trial recorded stays as it was; only the numbers it lacked were added.
    def kept(t: dict) -> dict:
        return {k: v for k, v in t.items() if k not in DEPLOYMENT_METRICS}

    assert kept(whole) == kept(before[whole_key])
    (row,) = [r for r in _rows(out / "results.csv") if r["train_size"] == "all"]
    assert float(row["ort_int8_latency_ms"]) == pytest.approx(whole["ort_int8_latency_ms"])
    # Measured once: a later resume adds nothing and keeps the first numbers.
    with pytest.warns(UserWarning, match="deployment numbers not measured"):
        assert cli([*study, "--deployment"]) == 0  # the changed checkpoint is named again
    assert "measuring the deployment numbers of 1 trial(s)" in capsys.readouterr().err
    assert trials()[whole_key] == whole
