"""`make results`: docs/results.md's tables rebuilt from the committed files in results/, byte
for byte; per-image predictions exported from a real results store and read back; the targets
stated from committed rows."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import build_store

from lightlayers.report.compare import pairwise
from lightlayers.report.ensemble import ensembles
from lightlayers.report.load import ReportError, load_run
from lightlayers.report.predictions import read_predictions, run_from_files
from lightlayers.report.targets import Candidate, candidates, evaluate
from lightlayers.runfolder import results_csv_text
from lightlayers.runfolder.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
DOC = Path("docs/results.md")


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "results.py"), *args],
                          capture_output=True, text=True, timeout=300, check=False)


def _module():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts/results.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The committed results/ and docs/results.md, copied: a rebuild must not touch the
    repository's own files."""
    shutil.copytree(ROOT / "results", tmp_path / "results")
    (tmp_path / "docs").mkdir()
    shutil.copy2(ROOT / DOC, tmp_path / DOC)
    return tmp_path


def test_the_committed_tables_rebuild_byte_for_byte(copy: Path) -> None:
    check = _script("build", "--check", "--root", str(copy))
    assert check.returncode == 0, check.stderr
    rebuilt = _script("build", "--root", str(copy))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (copy / DOC).read_bytes() == (ROOT / DOC).read_bytes()
    # The generated tables are really there, from the rows: a std rounded once (0.0045 of
    # the TTA AUC is 0.00449..., so 0.004, not 0.005).
    text = (copy / DOC).read_text()
    assert "| 0.909 ± 0.012 | 0.966 ± 0.004 |" in text
    assert "**not measured at 10 seeds**" in text


def test_a_tampered_row_fails_the_check_and_names_the_file(copy: Path) -> None:
    rows = copy / "results/study-npz/improved/results.csv"
    text = rows.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("study-light-k3,0,"))
    cells = line.split(",")
    cells[8] = repr(float(cells[8]) + 0.05)  # accuracy of one seed
    rows.write_text(text.replace(line, ",".join(cells)))
    before = (copy / DOC).read_bytes()
    check = _script("build", "--check", "--root", str(copy))
    assert check.returncode == 1
    assert "docs/results.md differs" in check.stderr and "make results" in check.stderr
    assert (copy / DOC).read_bytes() == before  # --check writes nothing
    assert _script("build", "--root", str(copy)).returncode == 0
    assert (copy / DOC).read_bytes() != before
    assert _script("build", "--check", "--root", str(copy)).returncode == 0


def test_the_learning_curve_tables_come_from_the_curves_file(copy: Path) -> None:
    curve = copy / "results/curves/pmnist/learning_curve.csv"
    text = curve.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("study-conv,improved,100/class,"))
    header = text.splitlines()[0].split(",")
    cells = line.split(",")
    cells[header.index("balanced_accuracy_mean")] = "0.123"
    curve.write_text(text.replace(line, ",".join(cells)))
    assert _script("build", "--check", "--root", str(copy)).returncode == 1
    assert _script("build", "--root", str(copy)).returncode == 0
    rows = [ln for ln in (copy / DOC).read_text().splitlines()
            if ln.startswith("| study-conv | 31,074 | ") and ln.count("|") in (9, 10)]
    # PneumoniaMNIST's balanced accuracy and AUC, then the JPEGs'.
    assert len(rows) == 4 and "| 0.123 |" in rows[0], rows
    assert not any("| 0.123 |" in r for r in rows[1:]), rows
    # A size missing from the file is one line naming the file, not a KeyError.
    curve.write_text("\n".join(ln for ln in text.splitlines() if ",250/class," not in ln))
    out = _script("build", "--root", str(copy))
    assert out.returncode != 0 and "learning_curve.csv has no row for" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_input_is_one_line_naming_what_and_where(copy: Path) -> None:
    (copy / "results/tta/npz/results.csv").unlink()
    out = _script("build", "--check", "--root", str(copy))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "results/tta/npz/results.csv does not exist" in out.stderr
    shutil.copy2(ROOT / "results/tta/npz/results.csv", copy / "results/tta/npz/results.csv")
    doc = copy / DOC
    doc.write_text(doc.read_text().replace("<!-- results.py: ablation -->",
                                           "<!-- results.py: ablations -->"))
    out = _script("build", "--root", str(copy))
    assert out.returncode == 2 and "unknown table 'ablations'" in out.stderr
    assert "docs/results.md line" in out.stderr


def _run_with_csv(run_dir: Path) -> Path:
    build_store(run_dir, models=("linear-8x8", "linear-4x4", "linear-2x2"), seeds=(0, 1, 2))
    with ResultsStore(run_dir / "results.db", create=False, readonly=True) as store:
        (run_dir / "results.csv").write_text(results_csv_text(store.trials()))
    return run_dir


def test_predictions_export_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    run_dir = _run_with_csv(tmp_path / "run")
    out = tmp_path / "committed" / "predictions.csv.gz"
    first = _script("export", str(run_dir), "--out", str(out))
    assert first.returncode == 0, first.stderr
    data = out.read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip's time stamp: none
    assert _script("export", str(run_dir), "--out", str(out)).returncode == 0
    assert out.read_bytes() == data
    lines = gzip.decompress(data).decode().splitlines()
    assert lines[0] == "trial_key,model,protocol,seed,image,label,probability"
    assert lines[1:] == sorted(lines[1:], key=lambda r: (r.split(",")[1], r.split(",")[2],
                                                       int(r.split(",")[3]),
                                                       int(r.split(",")[4])))
    store_run = load_run(run_dir)
    back = read_predictions(out)
    assert len(back) == 9
    for g in store_run.groups:
        for t in g.done:
            want = store_run.predictions[t["id"]]
            got = back[(t["model"], t["protocol"], t["seed"])]
            assert np.array_equal(got["labels"], want["labels"])
            np.testing.assert_allclose(got["probs"], want["probs"], atol=5e-10)


def test_committed_files_give_the_stores_comparisons_and_ensembles(tmp_path: Path) -> None:
    run_dir = _run_with_csv(tmp_path / "run")
    folder = tmp_path / "root" / "results" / "digits"
    folder.mkdir(parents=True)
    shutil.copy2(run_dir / "results.csv", folder / "results.csv")
    assert _script("export", str(run_dir), "--out",
                   str(folder / "predictions.csv.gz")).returncode == 0
    script = _module()
    files = script.load(tmp_path / "root", "results/digits")  # checks rows vs probabilities
    store = load_run(run_dir)
    a, _, _ = pairwise(store, n_boot=400)
    b, _, _ = pairwise(files, n_boot=400)
    assert [(c.model_a, c.model_b, c.metric) for c in a] == [
        (c.model_a, c.model_b, c.metric) for c in b]
    for x, y in zip(a, b, strict=True):
        assert y.difference == pytest.approx(x.difference, abs=1e-8)
        assert (y.low, y.high) == pytest.approx((x.low, x.high), abs=1e-8)
        assert y.p_holm == pytest.approx(x.p_holm)
    ea, eb = ensembles(store)[0], ensembles(files)[0]
    assert [e.metrics["accuracy"] for e in ea] == [e.metrics["accuracy"] for e in eb]

    # One probability changed by hand: its row no longer matches, and the build says where.
    raw = gzip.decompress((folder / "predictions.csv.gz").read_bytes()).decode().splitlines()
    cells = raw[1].split(",")
    cells[-1] = "0.000000000" if float(cells[-1]) >= 0.5 else "1.000000000"
    raw[1] = ",".join(cells)
    (folder / "predictions.csv.gz").write_bytes(gzip.compress(("\n".join(raw) + "\n").encode()))
    with pytest.raises(script.BuildError, match=r"predictions.csv.gz: .* gives accuracy"):
        script.load(tmp_path / "root", "results/digits")


def test_export_refuses_a_trial_without_predictions(tmp_path: Path) -> None:
    run_dir = _run_with_csv(tmp_path / "run")
    with ResultsStore(run_dir / "results.db") as store:
        store.conn.execute("DELETE FROM predictions WHERE trial_id = 2")
    out = _script("export", str(run_dir), "--out", str(tmp_path / "p.csv.gz"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "no stored test predictions for linear-8x8 seed 1" in out.stderr
    assert not (tmp_path / "p.csv.gz").exists()
    with pytest.raises(ReportError, match="does not exist"):
        read_predictions(tmp_path / "p.csv.gz")


# --- targets --------------------------------------------------------------------------------
def test_targets_of_the_committed_pneumoniamnist_run() -> None:
    folder = ROOT / "results/study-npz/improved"
    run = run_from_files(folder / "results.csv")
    t1, t2, t3 = evaluate(candidates(run, folder / "ensembles.csv"))
    assert t1.status == "not measured at 10 seeds"
    assert "study-light-k3 (6,447 parameters, 5 seeds)" in t1.sentence  # k5 has 10,141
    assert t2.status == "missed" and "study-light-k5 ensemble of 5 (50,705" in t2.sentence
    assert "short by 0.023" in t2.sentence
    assert t3.status == "missed"


def _cand(label: str, params: int, seeds: int, acc: float, bal: float, auc: float,
          light: bool = True, ensemble: bool = False) -> Candidate:
    return Candidate(label, params, seeds, {"accuracy": acc, "balanced_accuracy": bal,
                                            "auc": auc}, ensemble, light)


def test_targets_met_and_missed_at_their_edges() -> None:
    edge = _cand("k3", 10_000, 10, 0.90, 0.89, 0.96)
    assert [v.status for v in evaluate([edge])] == ["met", "missed", "missed"]
    short = _cand("k3", 6_447, 10, 0.95, 0.889, 0.99)
    assert evaluate([short])[0].status == "missed"
    assert "balanced accuracy 0.889 < 0.890" in evaluate([short])[0].sentence
    too_big = _cand("k5", 10_001, 10, 0.95, 0.95, 0.99)
    assert evaluate([too_big])[0].status == "not measured"
    not_light = _cand("conv", 5_000, 10, 0.95, 0.95, 0.99, light=False)
    assert evaluate([not_light])[0].status == "not measured"
    ens = _cand("k3", 100_000, 5, 0.946, 0.94, 0.991, ensemble=True)
    v = evaluate([edge, ens])
    assert [x.status for x in v] == ["met", "met", "met"]
    assert "k3 ensemble of 5 (100,000 parameters)" in v[1].sentence
    over = _cand("k3", 100_001, 5, 0.99, 0.99, 0.999, ensemble=True)
    assert [x.status for x in evaluate([edge, over])][1:] == ["missed", "missed"]


def test_blocks_recompute_from_predictions_when_a_folder_has_them(tmp_path: Path) -> None:
    run_dir = _run_with_csv(tmp_path / "run")
    root = tmp_path / "root"
    folder = root / "results" / "digits"
    folder.mkdir(parents=True)
    shutil.copy2(run_dir / "results.csv", folder / "results.csv")
    assert _script("export", str(run_dir), "--out",
                   str(folder / "predictions.csv.gz")).returncode == 0
    script = _module()
    pairs = script.pairs_block("results/digits")(root)
    assert "recomputed from `results/digits/predictions.csv.gz`" in pairs
    assert "after Holm's correction across the pairs shown" in pairs
    comps = pairwise(load_run(run_dir))[0]
    by_pair = {(c.model_a, c.model_b, c.metric): c for c in comps}
    row = next(ln for ln in pairs.splitlines() if ln.startswith("| linear-8x8 | linear-2x2 |"))
    acc = by_pair["linear-8x8", "linear-2x2", "accuracy"]
    assert row.split(" | ")[3] == f"{acc.p_holm:.3f}"  # the store's own comparison
    ens = script.ensembles_block("results/digits")(root)
    want = {e.group.model: e for e in ensembles(load_run(run_dir))[0]}
    assert f"| linear-8x8 | 195 | {want['linear-8x8'].metrics['accuracy']:.3f} |" in ens
    status = script.predictions_block(root)
    assert "with `predictions.csv.gz`: `results/digits`" in status
