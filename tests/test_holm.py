"""Holm's correction of the pairwise comparisons: a hand-computed example, its order and
monotonicity, the bootstrap p-value, and the report's files that carry it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import build_store

from lightlayers.report import write_report
from lightlayers.report.compare import (
    Comparison,
    bootstrap_p,
    distinguishable_sentence,
    holm,
    holm_family_text,
    with_holm,
)


def test_holm_matches_a_hand_computed_example() -> None:
    # Sorted: 0.005 x 4 = 0.020; 0.010 x 3 = 0.030; 0.030 x 2 = 0.060; 0.040 x 1 = 0.040,
    # raised to 0.060 so that the adjusted values keep the order of the raw ones.
    got = holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and is not counted in m (m = 3 here): 0.02 x 3 = 0.06, 0.5 x 2 = 1.0,
    # then 0.6 x 1 raised to 1.0.
    assert holm([0.6, float("nan"), 0.02, 0.5]) == pytest.approx(
        [1.0, float("nan"), 0.06, 1.0], nan_ok=True)
    assert holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])
    assert holm([]) == []


def test_holm_keeps_order_and_never_lowers_a_p_value() -> None:
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 21, 60):
        p = rng.random(m) ** 3  # many small ones, as among real differences
        adj = np.array(holm(list(p)))
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone along the raw order
        # Never stricter than Bonferroni's m * p, never looser than the raw p.
        assert np.all(adj <= np.minimum(1.0, m * p) + 1e-15)
        # The smallest p is multiplied by m exactly.
        assert adj[order[0]] == pytest.approx(min(1.0, m * p[order[0]]))


def test_bootstrap_p_counts_the_replicates_on_the_far_side() -> None:
    d = np.array([-1.0] * 10 + [1.0] * 90)  # 10 of 100 at or below 0
    assert bootstrap_p(d) == pytest.approx(2 * 11 / 101)
    assert bootstrap_p(np.ones(1999)) == pytest.approx(2 / 2000)  # never 0
    assert bootstrap_p(np.array([-1.0, 1.0])) == 1.0
    assert np.isnan(bootstrap_p(np.array([np.nan])))


def _comp(a: str, b: str, metric: str, diff: float, p: float,
          protocol: str = "improved") -> Comparison:
    return Comparison(protocol, a, b, metric, 0.9, 0.9 - diff, diff, diff - 0.01, diff + 0.01,
                      624, 5, 5, p)


def test_families_are_per_score_and_the_sentence_names_the_winners() -> None:
    comps = with_holm([_comp("k5", "k1", "accuracy", 0.04, 0.004),
                       _comp("k5", "conv", "accuracy", 0.02, 0.03),
                       _comp("k1", "conv", "accuracy", -0.03, 0.01),
                       _comp("k5", "k1", "auc", 0.02, 0.03)])
    assert [c.p_holm for c in comps] == pytest.approx([0.012, 0.03, 0.02, 0.03])
    assert [c.distinguishable for c in comps] == [True, True, True, True]
    # Two pairs at 0.03 in one family of two: 0.03 x 2 = 0.06, not distinguishable.
    tied = with_holm([_comp("a", "b", "accuracy", 0.1, 0.03), _comp("a", "c", "accuracy", 0.1,
                                                                    0.03)])
    assert [c.distinguishable for c in tied] == [False, False]
    text = distinguishable_sentence(comps)
    assert "accuracy: k5 > k1, k5 > conv, conv > k1 (of 3 pairs)" in text
    assert "AUC: k5 > k1 (of the one pair)" in text
    assert "none of the 2 pairs" in distinguishable_sentence(tied)
    alone = with_holm([_comp("a", "b", "auc", 0.1, 0.2)])
    assert distinguishable_sentence(alone).endswith("AUC: not the one pair.")


def test_report_files_carry_the_holm_adjusted_p(tmp_path: Path) -> None:
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-4x4", "linear-2x2"),
                          seeds=(0, 1))
    result = write_report(run_dir, formats=("csv", "html"), console=False)
    rows = list(csv.DictReader(io.StringIO((run_dir / "report" / "comparisons.csv")
                                           .read_text())))
    assert len(rows) == 6  # 3 pairs x (accuracy, AUC)
    for metric in ("accuracy", "auc"):
        fam = [r for r in rows if r["metric"] == metric]
        raw = [float(r["p_bootstrap"]) for r in fam]
        assert [float(r["p_holm"]) for r in fam] == pytest.approx(holm(raw))
        for r in fam:
            assert r["distinguishable_holm"] == str(int(float(r["p_holm"]) < 0.05))
    # 65 weights against 5 on the digits' parity: distinguishable even after the correction.
    first = next(r for r in rows if (r["model_a"], r["model_b"], r["metric"])
                 == ("linear-8x8", "linear-2x2", "accuracy"))
    assert first["distinguishable_holm"] == "1"
    html = result.html.read_text() if result.html else ""
    assert "<th scope='col'>p (Holm)</th>" in html and "after Holm&#x27;s correction" in html
    assert "adjusted by Holm's method across the 3 pairs of each score." in html


def test_the_page_names_the_family_of_each_adjustment_under_two_protocols(
        tmp_path: Path) -> None:
    """Three models under each of two protocols: six pairs in the table, but each p-value is
    adjusted among the three pairs of its own protocol and score, and the page says so."""
    run_dir = build_store(tmp_path / "run", models=("linear-8x8", "linear-4x4", "linear-2x2"),
                          seeds=(0, 1), epochs=2, protocols=("seed", "improved"))
    result = write_report(run_dir, formats=("csv", "html"), console=False)
    rows = list(csv.DictReader(io.StringIO((run_dir / "report" / "comparisons.csv")
                                           .read_text())))
    families: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        families.setdefault((r["protocol"], r["metric"]), []).append(float(r["p_bootstrap"]))
    assert sorted(families) == [("improved", "accuracy"), ("improved", "auc"),
                                ("seed", "accuracy"), ("seed", "auc")]
    for (protocol, metric), raw in families.items():
        assert len(raw) == 3
        got = [float(r["p_holm"]) for r in rows
               if (r["protocol"], r["metric"]) == (protocol, metric)]
        assert got == pytest.approx(holm(raw))  # m = 3, not the 6 pairs of the table
    html = result.html.read_text() if result.html else ""
    text = html.split("id='comparisons'")[1].split("</p>")[0]
    assert ("p (Holm): the bootstrap p-value of no difference, adjusted by Holm's method "
            "across the 3 pairs of each score and protocol.") in text
    assert "6 pairs" not in text


def test_families_of_different_sizes_are_each_given_their_count() -> None:
    names = {"accuracy": "accuracy", "auc": "AUC"}
    seed = [_comp(a, b, m, 0.01, 0.2, "seed") for a, b in (("x", "y"), ("x", "z"), ("y", "z"))
            for m in ("accuracy", "auc")]
    improved = [_comp("x", "y", m, 0.01, 0.2) for m in ("accuracy", "auc")]
    assert holm_family_text(with_holm(seed), names) == "the 3 pairs of each score"
    assert holm_family_text(with_holm(seed + improved), names) == (
        "the pairs of each score and protocol (3 pairs under seed, 1 pair under improved)")
    # AUC left out of one pair (no p-value): holm does not count it, nor does the text.
    no_auc = [*seed[:5], _comp("y", "z", "auc", 0.01, float("nan"), "seed")]
    assert holm_family_text(with_holm(no_auc), names) == (
        "the pairs of each score (3 pairs for accuracy, 2 pairs for AUC)")
    assert holm_family_text(with_holm(no_auc + improved), names) == (
        "the pairs of each score and protocol (3 pairs for accuracy under seed, 2 pairs for "
        "AUC under seed, 1 pair under improved)")
    assert holm_family_text([_comp("x", "y", "auc", 0.0, float("nan"))]) == (
        "no pair has a p-value to adjust")
