"""The scripts behind the README's results: the ablation and the two-protocol table."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightlayers.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """The full recipe and one variant, on scikit-learn's digits for one epoch."""
    tmp = tmp_path_factory.mktemp("ablation")
    proc = _script("ablation.py", "--data", "digits", "--epochs", "1", "--seeds", "0,1",
                   "--only", "no-label-smoothing", "--runs", str(tmp / "runs"),
                   "--results", str(tmp / "results"))
    assert proc.returncode == 0, proc.stderr
    return tmp


def test_ablation_takes_out_one_ingredient_and_tables_the_change(ablation):
    runs = ablation / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["improved", "no-label-smoothing"]
    protos = {p.name: yaml.safe_load((p / "config.yaml").read_text())["resolved_protocol"]
              for p in runs.iterdir()}
    assert protos["improved"]["label_smoothing"] == 0.1
    assert protos["no-label-smoothing"]["label_smoothing"] == 0.0
    rest = {k: v for k, v in protos["improved"].items() if k != "label_smoothing"}
    assert rest == {k: v for k, v in protos["no-label-smoothing"].items()
                    if k != "label_smoothing"}
    with open(ablation / "results" / "ablation.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["improved", "no label smoothing"]
    base, var = rows["improved"], rows["no label smoothing"]
    assert base["seeds"] == var["seeds"] == "2"
    for m in ("accuracy", "auc", "sensitivity", "specificity"):
        assert float(var[f"{m}_delta"]) == pytest.approx(
            float(var[f"{m}_mean"]) - float(base[f"{m}_mean"]))
    md = (ablation / "results" / "ablation.md").read_text()
    assert f"{float(var['accuracy_mean']):.3f} ± {float(var['accuracy_std']):.3f}" in md


def test_results_table_reads_the_reports(ablation):
    run = ablation / "runs" / "improved"
    write_report(run, formats=("csv",), console=False)
    table = run / "report" / "table.csv"
    proc = _script("results_table.py", str(table))
    assert proc.returncode == 0, proc.stderr
    with open(table, newline="") as f:
        (row,) = csv.DictReader(f)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("| study-light-k2 |"))
    acc = f"{float(row['accuracy_mean']):.3f} ± {float(row['accuracy_std']):.3f}"
    assert acc in line and f"{int(float(row['params_total_mean'])):,}" in line
    assert line.endswith(f"| {row['collapsed_runs']}/2 |")
    # Two tables of one protocol would hide one of them.
    twice = _script("results_table.py", str(table), str(table))
    assert twice.returncode != 0 and "a second table for protocol 'improved'" in twice.stderr
    missing = _script("results_table.py", str(ablation / "nope.csv"))
    assert missing.returncode != 0 and "lightlayers report" in missing.stderr


def test_threshold_policies_choose_on_validation_and_score_the_recorded_test(tmp_path):
    import numpy as np
    from data_fixtures import pneumonia_subset

    from lightlayers.cli import main as cli
    from lightlayers.runfolder.store import ResultsStore

    data = pneumonia_subset(tmp_path / "pneumoniamnist_28_subset.npz")
    out = tmp_path / "run"
    assert cli(["run", "--data", str(data), "--models", "study-light-k1", "--seeds", "0,1",
                "--epochs", "2", "--size", "28", "--quiet", "--no-report", "--out",
                str(out)]) == 0
    proc = _script("threshold_policies.py", str(out), "--out", str(tmp_path / "t.md"))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in (tmp_path / "t.md").read_text().splitlines()[2:]}
    assert list(rows) == ["0.5", "youden", "equal-error", "val-accuracy"]
    with ResultsStore(out / "results.db", create=False) as store:
        recorded = [t["accuracy"] for t in store.trials()]
    # The 0.5 policy is the decision rule the run recorded: the same test accuracy.
    assert rows["0.5"][0] == "2" and rows["0.5"][1].startswith(f"{np.mean(recorded):.3f}")
    assert rows["0.5"][4] == "0.500 ± 0.000"
    assert "100 images" in proc.stderr  # the validation split it chose on
    missing = _script("threshold_policies.py", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_compare_runs_pairs_the_same_model_across_run_folders(ablation, tmp_path):
    runs = ablation / "runs"
    out = tmp_path / "cmp"
    proc = _script("compare_runs.py", f"{runs / 'no-label-smoothing'}: no ls",
                   str(runs / "improved"), "--same-model", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    with open(ablation / "results" / "ablation.csv", newline="") as f:
        table = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"accuracy", "auc"}
    for metric, row in rows.items():
        assert (row["model_a"], row["model_b"]) == ("study-light-k2 no ls", "study-light-k2")
        assert float(row["difference"]) == pytest.approx(
            float(table["no label smoothing"][f"{metric}_mean"])
            - float(table["improved"][f"{metric}_mean"]))
        assert float(row["ci95_low"]) <= float(row["difference"]) <= float(row["ci95_high"])
    assert "study-light-k2 no ls | study-light-k2 | accuracy" in out.with_suffix(".md").read_text()


def test_compare_runs_refuses_runs_tested_on_other_images(ablation):
    import dataclasses

    from lightlayers.report.compare import merge_runs
    from lightlayers.report.load import ReportError, load_run

    run = load_run(ablation / "runs" / "improved")
    fp = run.meta["data_fingerprint"]
    other = dataclasses.replace(run, meta={**run.meta, "data_fingerprint": {
        **fp, "split": {**fp["split"], "members": {**fp["split"]["members"], "test": "9:x"}}}})
    with pytest.raises(ReportError, match="not tested on the same images"):
        merge_runs([(run, ""), (other, " other")])
    merged = merge_runs([(run, ""), (run, " again")])
    assert [g.label for g in merged.groups] == ["study-light-k2", "study-light-k2 again"]
    ids = [t["id"] for g in merged.groups for t in g.done]
    assert len(set(ids)) == len(ids) and all(i in merged.predictions for i in ids)


def test_ablation_on_validation_folds_never_scores_test_and_resumes(tmp_path):
    """--folds: each variant trained on every fold (real chest X-rays), the threshold variant
    from the full recipe's own probabilities, and a rerun reuses the variants' fold scores."""
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from data_fixtures import pneumonia_subset

    data = pneumonia_subset(tmp_path / "pneumoniamnist_small.npz", train=160, val=40, test=40)
    args = ("--data", str(data), "--model", "paper-light-k1", "--epochs", "2", "--folds", "2",
            "--only", "no-class-weighting,threshold-from-val-youden-not-0-5",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"))
    proc = _script("ablation.py", *args)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "results" / "ablation-folds.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["improved", "no class weighting",
                          "threshold from val (Youden), not 0.5"]
    assert {r["folds"] for r in rows.values()} == {"2"}
    kept = tmp_path / "runs-folds"
    scores = {p.stem: json.loads(p.read_text()) for p in kept.glob("*.json")}
    base, cut = scores["improved"], scores["threshold-from-val-youden-not-0-5"]
    # The same probabilities: AUC unchanged, the threshold chosen on the other fold.
    assert [s["auc"] for s in cut] == [s["auc"] for s in base]
    assert all(0 < s["threshold"] < 1 for s in cut)
    md = (tmp_path / "results" / "ablation-folds.md").read_text()
    with open(tmp_path / "results" / "ablation-folds-rows.csv", newline="") as f:
        per_fold = list(csv.DictReader(f))
    assert [(r["variant"], r["fold"]) for r in per_fold] == [
        (v, k) for v in rows for k in ("0", "1")]
    for name, row in rows.items():
        mine = [float(r["auc"]) for r in per_fold if r["variant"] == name]
        assert float(row["auc_mean"]) == pytest.approx(sum(mine) / 2)
    assert "2 patient-grouped validation folds of the training images, the test split unused" \
        in md
    # docs/results.md's table, rebuilt from the per-fold rows alone.
    from test_results_rebuild import _module

    table = _module().ablation_folds_block(tmp_path)
    line = next(x for x in table.splitlines() if x.startswith("| no class weighting |"))
    mine = [float(r["accuracy"]) for r in per_fold if r["variant"] == "no class weighting"]
    base_acc = [float(r["accuracy"]) for r in per_fold if r["variant"] == "improved"]
    mean = sum(mine) / 2
    std = abs(mine[0] - mine[1]) / 2 ** 0.5
    assert f"| {mean:.3f} ± {std:.3f} ({mean - sum(base_acc) / 2:+.3f}) |" in line
    # A rerun trains only the full recipe again: the variants' fold scores are kept.
    before = {p.name: p.stat().st_mtime_ns for p in kept.glob("*.json")}
    proc = _script("ablation.py", *args)
    assert proc.returncode == 0, proc.stderr
    assert "== no class weighting: kept from" in proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in kept.glob("*.json")}
    assert {k for k in before if before[k] != after[k]} == {"improved.json"}
