"""Seed ensembles in the report: each model's seeds' test probabilities averaged, scored as a
trial is, with all its members' parameters."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import build_store

from lightlayers.cli import main as cli
from lightlayers.metrics import classification_metrics
from lightlayers.report import write_report
from lightlayers.report.ensemble import ensembles
from lightlayers.report.load import Group, RunData, load_run
from lightlayers.runfolder.store import ResultsStore


def test_ensemble_rows_are_the_averaged_stored_predictions(tmp_path: Path, capsys) -> None:
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-2x2"),
                          seeds=(0, 1, 2))
    # A third model with one finished seed has no ensemble.
    build_store(tmp_path / "single", models=("linear-4x4",), seeds=(0,))
    result = write_report(run_dir, console=False)
    report = run_dir / "report"
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(
        (report / "ensembles.csv").read_text()))}
    assert list(rows) == ["linear-8x8", "linear-2x2"]
    with ResultsStore(run_dir / "results.db", create=False) as store:
        trials = store.trials()
        preds = {t["id"]: store.predictions(t["id"]) for t in trials}
    for model, row in rows.items():
        mine = [t for t in trials if t["model"] == model]
        probs = np.mean([preds[t["id"]]["probs"] for t in mine], axis=0)
        labels = preds[mine[0]["id"]]["labels"]
        threshold = float(np.mean([t["threshold"] for t in mine]))
        want = classification_metrics(labels, probs, 1, threshold)
        assert float(row["accuracy"]) == pytest.approx(want["accuracy"])
        assert float(row["auc"]) == pytest.approx(want["auc"])
        assert float(row["ece"]) == pytest.approx(want["ece"])
        assert int(row["params_total"]) == sum(t["params_total"] for t in mine)
        assert row["seeds"] == "0 1 2" and row["members"] == "3"
        assert float(row["member_mean_accuracy"]) == pytest.approx(
            np.mean([t["accuracy"] for t in mine]))
    html = result.html.read_text() if result.html else ""
    assert "id='ensembles'" in html and "linear-8x8" in html
    assert "Hollow markers: seed ensembles" in html  # the accuracy-vs-parameters caption
    assert cli(["report", str(run_dir), "--json", "--format", "csv"]) == 0
    printed = json.loads(capsys.readouterr().out)["ensembles"]
    assert [(e["model"], e["params_total"]) for e in printed] == [
        (m, int(r["params_total"])) for m, r in rows.items()]
    # One finished seed: nothing to average, no file.
    write_report(tmp_path / "single", formats=("csv",), console=False)
    assert not (tmp_path / "single" / "report" / "ensembles.csv").exists()
    assert ensembles(load_run(tmp_path / "single")) == ([], [])


def test_averaging_independent_errors_beats_the_members() -> None:
    # Five members whose errors are independent noise around the same signal: their average
    # is right more often than they are on their own. A wrong average (a sum, one member)
    # would not be.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    g = Group("m", "m", "seed")
    predictions = {}
    for seed in range(5):
        z = 0.8 * (2 * labels - 1) + rng.normal(scale=1.5, size=len(labels))
        p1 = 1 / (1 + np.exp(-z))
        g.done.append({"id": seed + 1, "seed": seed, "threshold": 0.5, "params_total": 100,
                       "size_mb": 0.1, "accuracy": float(np.mean((p1 >= 0.5) == labels))})
        predictions[seed + 1] = {"labels": labels, "probs": np.stack([1 - p1, p1], 1)}
    run = RunData(Path("."), [g], [], [], {"data": {"positive_class": 1}}, {}, predictions, {})
    (e,), notes = ensembles(run)
    assert notes == [] and e.params_total == 500 and e.size_mb == pytest.approx(0.5)
    assert e.threshold == 0.5 and e.label == "m ensemble of 5"
    assert e.metrics["accuracy"] > e.member_accuracy + 0.03
