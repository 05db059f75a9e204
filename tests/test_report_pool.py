"""`lightlayers report A B --out DIR`: seeds of one study run in separate folders (side by side,
one process per core) pooled into one report, and every way pooling could mix studies refused."""

import csv
import shutil

import numpy as np
import pytest
from data_fixtures import pneumonia_subset

from lightlayers.cli import main as cli
from lightlayers.runfolder.store import ResultsStore


def _run(data, out, seed: int, *extra: str) -> None:
    assert cli(["run", "--data", str(data), "--models", "study-light-k1", "--seeds", str(seed),
                "--epochs", "1", "--size", "28", "--quiet", "--no-report", "--out", str(out),
                *extra]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    data = pneumonia_subset(tmp / "pneumoniamnist_28_subset.npz", train=200, val=60, test=100)
    _run(data, tmp / "s0", 0)
    _run(data, tmp / "s1", 1)
    _run(data, tmp / "s1-32px", 1, "--size", "32")
    return tmp


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _recorded(run_dir):
    with ResultsStore(run_dir / "results.db", create=False) as store:
        return store.trials()


def test_pooled_report_holds_each_folders_seeds_once(runs, tmp_path, capsys):
    out = tmp_path / "pooled"
    assert cli(["report", str(runs / "s0"), str(runs / "s1"), "--out", str(out),
                "--format", "csv,md,html", "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert "<title>lightlayers report: s0 + s1</title>" in html
    assert str(runs / "s0" / "results.db") in html and str(runs / "s1" / "results.db") in html
    (row,) = _rows(out / "table.csv")
    accuracies = [t["accuracy"] for d in ("s0", "s1") for t in _recorded(runs / d)]
    assert row["seeds"] == "0 1" and row["n_seeds"] == "2" and row["incomplete"] == "0"
    assert float(row["accuracy_mean"]) == pytest.approx(np.mean(accuracies))
    trials = _rows(out / "results.csv")
    assert [(t["seed"], t["run_dir"]) for t in trials] == [
        ("0", str(runs / "s0")), ("1", str(runs / "s1"))]
    assert [float(t["accuracy"]) for t in trials] == pytest.approx(accuracies)
    (ens,) = _rows(out / "ensembles.csv")
    assert ens["seeds"] == "0 1" and ens["members"] == "2"
    assert int(ens["params_total"]) == 2 * int(float(row["params_total_mean"]))
    md = (out / "table.md").read_text()
    assert "pooled from 2 run folders" in md and "study-light-k1: seeds 0, 1" in md
    # The folders themselves are left as they were: no report written into them.
    assert not (runs / "s0" / "report").exists() and not (runs / "s1" / "report").exists()


def test_a_seed_stopped_in_one_folder_and_finished_in_another_counts_once(runs, tmp_path):
    stopped = tmp_path / "s0-stopped-s1"
    shutil.copytree(runs / "s0", stopped)
    (t,) = _recorded(stopped)
    with ResultsStore(stopped / "results.db") as store:
        store.add_trials([{**t, "seed": 1}])  # planned, never run: as a study stopped early
    alone = tmp_path / "alone"
    assert cli(["report", str(stopped), "--out", str(alone), "--format", "md", "--quiet"]) == 0
    assert "not finished yet" in (alone / "table.md").read_text()
    out = tmp_path / "pooled"
    assert cli(["report", str(stopped), str(runs / "s1"), "--out", str(out),
                "--format", "csv,md", "--quiet"]) == 0
    md = (out / "table.md").read_text()
    assert "not finished" not in md and "missing seeds" not in md
    assert [r["seed"] for r in _rows(out / "results.csv")] == ["0", "1"]


def _refused(capsys, *args: str) -> str:
    assert cli(["report", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_pooling_refuses_what_would_mix_studies_or_count_a_seed_twice(runs, tmp_path, capsys):
    s0, s1, out = str(runs / "s0"), str(runs / "s1"), str(tmp_path / "out")
    assert "pass --out DIR" in _refused(capsys, s0, s1)
    assert "named twice" in _refused(capsys, s0, s0, "--out", out)
    twin = tmp_path / "s0-copy"
    shutil.copytree(runs / "s0", twin)
    err = _refused(capsys, s0, str(twin), "--out", out)
    assert "seed 0 of study-light-k1 finished in both" in err and "count twice" in err
    err = _refused(capsys, s0, str(runs / "s1-32px"), "--out", out)
    assert "other settings (size differ)" in err
    other = tmp_path / "s1-other-data"
    shutil.copytree(runs / "s1", other)
    with ResultsStore(other / "results.db") as store:
        fp = store.meta()["data_fingerprint"]
        store.set_meta(data_fingerprint={**fp, "content": {**fp["content"], "sha256": "0" * 64}})
    err = _refused(capsys, s0, str(other), "--out", out)
    assert "not made from the same data and split (content differ)" in err
    assert not (tmp_path / "out").exists()


def test_compare_runs_pools_folders_joined_by_plus(runs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, str(script), f"{runs / 's0'}+{runs / 's1'}: pooled",
                           str(runs / "s1"), "--same-model", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {r["metric"]: r for r in _rows(out.with_suffix(".csv"))}
    acc = {d: _recorded(runs / d)[0]["accuracy"] for d in ("s0", "s1")}
    assert (rows["accuracy"]["model_a"], rows["accuracy"]["model_b"]) == (
        "study-light-k1 pooled", "study-light-k1")
    assert float(rows["accuracy"]["difference"]) == pytest.approx(
        (acc["s0"] + acc["s1"]) / 2 - acc["s1"])
    twice = subprocess.run([sys.executable, str(script), f"{runs / 's1'}+{runs / 's1'}",
                            str(runs / "s0"), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert twice.returncode == 1 and "named twice" in twice.stderr
    assert "Traceback" not in twice.stderr
