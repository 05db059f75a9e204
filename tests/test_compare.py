"""Which differences are real (paired bootstrap over test images and seeds) and calibration
(ECE, reliability): checked against scikit-learn, hand counts, simulated nulls and real runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import build_store
from sklearn.metrics import roc_auc_score

from lightlayers.cli import main as cli
from lightlayers.metrics.calibration import ece, reliability
from lightlayers.report import write_report
from lightlayers.report.compare import (
    N_BOOT,
    pairwise,
    replicate_count,
    weighted_auc,
)
from lightlayers.report.load import Group, RunData


# --- AUC under bootstrap weights -----------------------------------------------------------
def test_weighted_auc_is_sklearns_auc_of_the_resampled_images() -> None:
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.random(n) < 0.4
    score = np.round(rng.random(n) + 0.4 * truth, 1)  # many ties
    assert weighted_auc(truth, score, np.ones((1, n)))[0] == pytest.approx(
        roc_auc_score(truth, score), abs=1e-12)
    draws = rng.integers(0, n, (5, n))
    weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
    got = weighted_auc(truth, score, weights)
    want = [roc_auc_score(truth[d], score[d]) for d in draws]
    np.testing.assert_allclose(got, want, atol=1e-12)
    one_class = np.zeros((1, n))
    one_class[0, np.flatnonzero(truth)[:3]] = 1  # only positives drawn: no AUC
    assert np.isnan(weighted_auc(truth, score, one_class)[0])


# --- calibration ------------------------------------------------------------------------------
def test_ece_by_hand() -> None:
    # Bin [0.6, 0.667): two images at 0.65, one right -> |0.5 - 0.65|; bin [0.933, 1]: two at
    # 0.95 and 1.0, both right -> |1 - 0.975|. ECE = (2 * 0.15 + 2 * 0.025) / 4.
    probs = np.array([[0.65, 0.35], [0.35, 0.65], [0.95, 0.05], [0.0, 1.0]])
    labels = np.array([0, 0, 0, 1])
    rel = reliability(labels, probs)
    assert rel.count.sum() == 4 and rel.count[9] == 2 and rel.count[14] == 2
    assert rel.accuracy[9] == 0.5 and rel.confidence[14] == pytest.approx(0.975)
    assert ece(labels, probs) == pytest.approx((2 * 0.15 + 2 * 0.025) / 4)


def test_ece_tells_calibrated_from_overconfident() -> None:
    rng = np.random.default_rng(1)
    n = 20000
    p = rng.uniform(0.5, 1.0, n)  # the confidence of class 0
    labels = (rng.random(n) >= p).astype(int)  # class 0 comes true with probability p
    calibrated = np.stack([p, 1 - p], axis=1)
    assert ece(labels, calibrated) < 0.02
    sure = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)  # right 75% of the time
    assert ece(labels, sure) == pytest.approx(0.99 - np.mean(labels == 0), abs=1e-9)


# --- pairwise differences ---------------------------------------------------------------------
def _run(models: dict[str, list[np.ndarray]], labels: np.ndarray) -> RunData:
    """A RunData holding, per model, one trial per probability array (seeds 0, 1, ...)."""
    groups, predictions, tid = [], {}, 0
    for name, probs_per_seed in models.items():
        g = Group(name, name, "seed")
        for seed, probs in enumerate(probs_per_seed):
            tid += 1
            g.done.append({"id": tid, "seed": seed, "threshold": 0.5})
            predictions[tid] = {"labels": labels, "probs": probs, "classes": ["a", "b"]}
        groups.append(g)
    return RunData(Path("."), groups, [], [], {"data": {"positive_class": 1}}, {}, predictions,
                   {})


def _probs(labels: np.ndarray, skill: float, rng: np.random.Generator) -> np.ndarray:
    """A model's probabilities of class 1: noisy scores that lean toward the truth by skill."""
    z = skill * (2 * labels - 1) + rng.normal(size=len(labels))
    p1 = 1 / (1 + np.exp(-z))
    return np.stack([1 - p1, p1], axis=1)


def test_a_real_difference_is_found_and_the_point_is_the_difference_of_means() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    good = [_probs(labels, 2.0, rng) for _ in range(3)]
    poor = [_probs(labels, 0.3, rng) for _ in range(3)]
    comps, notes, n_boot = pairwise(_run({"good": good, "poor": poor}, labels))
    assert notes == [] and n_boot == N_BOOT
    by_metric = {c.metric: c for c in comps}
    assert set(by_metric) == {"accuracy", "auc"}
    acc = by_metric["accuracy"]
    mean = lambda ps: np.mean([np.mean((p[:, 1] >= 0.5) == labels) for p in ps])  # noqa: E731
    assert acc.difference == pytest.approx(mean(good) - mean(poor))
    auc = by_metric["auc"]
    assert auc.mean_a == pytest.approx(np.mean([roc_auc_score(labels, p[:, 1]) for p in good]))
    for c in comps:
        assert c.real and 0 < c.low < c.difference < c.high
        assert (c.n_images, c.seeds_a, c.seeds_b) == (400, 3, 3)


def test_intervals_hold_zero_for_equal_models_about_95_percent_of_the_time() -> None:
    # 40 pairs of models of equal skill, each trained "anew" (independent noise): a 95%
    # interval that covers 0 in fewer than 85% of them would call noise a difference.
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(40):
        labels = rng.integers(0, 2, 200)
        a = [_probs(labels, 1.0, rng) for _ in range(3)]
        b = [_probs(labels, 1.0, rng) for _ in range(3)]
        comps, _, _ = pairwise(_run({"a": a, "b": b}, labels), n_boot=400)
        covered += sum(c.low <= 0 <= c.high for c in comps)
    assert covered / 80 >= 0.85, covered


def test_models_with_other_test_labels_are_not_compared() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 100)
    other = labels.copy()
    other[0] = 1 - other[0]
    run = _run({"a": [_probs(labels, 1, rng)], "b": [_probs(labels, 1, rng)]}, labels)
    run.predictions[2] = {**run.predictions[2], "labels": other}
    comps, notes, _ = pairwise(run)
    assert comps == [] and notes == [
        "b: not compared with the other models, its test labels differ from theirs"]


def test_replicates_shrink_only_for_large_splits_and_never_below_1000() -> None:
    assert replicate_count(35, 624, 2) == N_BOOT  # the chest X-ray study, 7 models x 5 seeds
    assert replicate_count(6, 10000, 10) == 1666  # 6 x 10^5 image-class cells
    assert replicate_count(35, 10000, 10) == 1000  # MNIST-sized: never below 1,000
    assert replicate_count(100, 10000, 10) == 1000


def test_fewer_replicates_are_said_in_a_note() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 150_000)
    run = _run({m: [_probs(labels, 1, rng) for _ in range(2)] for m in ("a", "b")}, labels)
    comps, notes, used = pairwise(run, which=("accuracy",))
    assert used == 1666 and len(comps) == 1
    assert notes == ["paired bootstrap (seed): 1,666 replicates instead of 2,000, as 4 trials "
                     "x 150,000 test images would make the report slow; each 95% limit rests "
                     "on about 42 replicates"]
    small = _run({m: [_probs(labels[:100], 1, rng)] for m in ("a", "b")}, labels[:100])
    assert pairwise(small, 500, which=("accuracy",))[1:] == ([], 500)  # asked for: no note


# --- in the report --------------------------------------------------------------------------
def test_report_writes_comparisons_and_reliability(tmp_path: Path, capsys) -> None:
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-2x2"), seeds=(0, 1))
    result = write_report(run_dir, console=False)
    report = run_dir / "report"
    table = {r["model"]: r for r in csv.DictReader(io.StringIO(
        (report / "table.csv").read_text()))}
    rows = list(csv.DictReader(io.StringIO((report / "comparisons.csv").read_text())))
    assert [(r["model_a"], r["model_b"], r["metric"]) for r in rows] == [
        ("linear-8x8", "linear-2x2", "accuracy"), ("linear-8x8", "linear-2x2", "auc")]
    for r in rows:
        m = r["metric"]
        diff = float(table["linear-8x8"][f"{m}_mean"]) - float(table["linear-2x2"][f"{m}_mean"])
        assert float(r["difference"]) == pytest.approx(diff)
        assert float(r["ci95_low"]) <= float(r["difference"]) <= float(r["ci95_high"])
        assert r["seeds_a"] == r["seeds_b"] == "2" and r["bootstrap_replicates"] == str(N_BOOT)
    # 65 weights against 5 on the digits' parity: a difference no resampling undoes.
    assert rows[0]["interval_excludes_zero"] == "1" and float(rows[0]["difference"]) > 0.1
    # Each trial's ECE is recorded and summarized; the reliability figure is in the page.
    assert float(table["linear-8x8"]["ece_mean"]) > 0
    html = result.html.read_text() if result.html else ""
    assert "id='comparisons'" in html and "id='fig-reliability'" in html
    assert (report / "figures" / "reliability.png").is_file()
    # report --json carries the same comparisons, unformatted.
    assert cli(["report", str(run_dir), "--json", "--format", "csv"]) == 0
    data = json.loads(capsys.readouterr().out)
    printed = data["comparisons"]
    assert data["bootstrap_replicates"] == N_BOOT == int(rows[0]["bootstrap_replicates"])
    assert [(c["metric"], c["difference"], c["low"], c["high"], c["interval_excludes_zero"])
            for c in printed] == [(r["metric"], float(r["difference"]), float(r["ci95_low"]),
                                   float(r["ci95_high"]), r["interval_excludes_zero"] == "1")
                                  for r in rows]
