"""The tuned headline's pipeline on real chest X-rays: tune --decide, run --tuned, collect into
results/headline/NAME, and the README's table rebuilt from the collected files alone."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
from data_fixtures import pneumonia_subset

from lightlayers.cli import main

pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]


def cli(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()


def _module():
    from test_results_rebuild import _module as results_script

    return results_script()


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("headline")
    data = pneumonia_subset(tmp / "pneumoniamnist_small.npz", train=160, val=40, test=40)
    common = ["--data", str(data), "--models", "paper-light-k1,study-light-k1", "--protocol",
              "improved", "--set", "epochs=2", "--threads", "1", "--quiet"]
    cli(["tune", *common, "--folds", "2", "--budget", "2", "--decide", "--out",
         str(tmp / "T")])
    cli(["run", *common, "--tuned", str(tmp / "T"), "--seeds", "0,1,2", "--out",
         str(tmp / "R"), "--no-report"])
    root = tmp / "repo"
    assert _module().collect("pmnist", tmp / "R", tmp / "T", root) == 0
    return tmp, root, root / "results" / "headline" / "pmnist"


def _t_interval(xs: list[float]) -> tuple[float, float, float, float]:
    from scipy.stats import t

    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def test_collect_writes_the_run_its_predictions_tuning_and_ledger_count(
        collected: tuple[Path, Path, Path]) -> None:
    from lightlayers.ledger import split_uses, test_fingerprint
    from lightlayers.runfolder.store import ResultsStore

    tmp, _, folder = collected
    assert sorted(p.name for p in folder.iterdir()) == [
        "ledger.json", "predictions.csv.gz", "results.csv", "tuning.json"]
    assert (folder / "results.csv").read_text() == (tmp / "R" / "results.csv").read_text()
    tuning = json.loads((folder / "tuning.json").read_text())
    assert tuning["folder"] == "T" and str(tmp) not in (folder / "tuning.json").read_text()
    assert (tuning["budget"], tuning["folds"], tuning["objective"]) == (2, 2, "auc")
    for m in tuning["models"]:
        assert m["decided"] == m["decisions"]["settings"]
        assert len(m["decisions"]["base"]["objective"]) == 2
    with ResultsStore(tmp / "R" / "results.db", create=False) as store:
        test = test_fingerprint(store.meta()["data_fingerprint"])
    (use,) = split_uses(test)
    ledger = json.loads((folder / "ledger.json").read_text())
    assert (ledger["settings"], ledger["scores"], ledger["test"]) == (use.settings, use.scores,
                                                                      test)
    assert use.settings >= 6  # this run's 2 models x 3 seeds at least


def test_the_headline_table_is_rebuilt_from_the_collected_files(
        collected: tuple[Path, Path, Path]) -> None:
    _, root, folder = collected
    text = _module().headline_block("pmnist")(root)
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for model in ("paper-light-k1", "study-light-k1"):
        mine = [r for r in rows if r["model"] == model]
        assert len(mine) == 3
        line = next(x for x in text.splitlines() if x.startswith(f"| {model} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{int(mine[0]['params_total']):,}"
        for cell, key in zip(cells[2:], ("accuracy", "balanced_accuracy", "sensitivity",
                                         "specificity", "auc", "ece"), strict=True):
            mean, std, lo, hi = _t_interval([float(r[key]) for r in mine])
            assert cell == f"{mean:.3f} ± {std:.3f} [{lo:.3f}, {hi:.3f}]", key
    tuning = json.loads((folder / "tuning.json").read_text())
    ledger = json.loads((folder / "ledger.json").read_text())
    assert "over 3 seeds per model, each scored once on the 40 test images" in text
    assert ("the same budget (2 trials, 2 validation folds of the training images (this file "
            "names no patients: identical images kept in one fold)") in text
    assert "objective validation AUC" in text
    assert "|\n\nMean ± std [95% interval]" in text  # a paragraph, not a row of the table
    for m in tuning["models"]:
        kept = m["decided"]
        said = re.search(rf"{m['model']}: (.*?)(?:; |\.$)", text, re.M)
        assert said, m["model"]
        assert said.group(1) == ("nothing kept" if not kept else ", ".join(
            f"{ {'ema': 'EMA', 'tta': 'TTA'}.get(k, k)} {v}" for k, v in sorted(kept.items())))
    assert f"scored under {ledger['settings']:,} distinct settings" in text
    assert "after Holm's correction" in text
    assert re.search(r"accuracy: (.* \(of the one pair\)|not the one pair)", text)
    assert "| target | verdict | measured |" in text


def test_the_decisions_table_shows_every_fold_number_behind_each_choice(
        collected: tuple[Path, Path, Path]) -> None:
    _, root, folder = collected
    text = _module().decisions_block("pmnist")(root)
    tuning = json.loads((folder / "tuning.json").read_text())
    lines = text.splitlines()
    assert lines[0] == ("| model | tuned | + EMA 0.999 | + TTA, 4 views | 4 epochs "
                        "| threshold 0.5 -> Youden |")

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    for m in tuning["models"]:
        d = m["decisions"]
        line = next(x for x in lines if x.startswith(f"| {m['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        base = d["base"]["objective"]
        assert cells[1] == f"{mean(base):.3f} / {mean(d['base']['balanced_accuracy']):.3f}"
        for cell, name in zip(cells[2:5], ("ema", "tta", "epochs"), strict=True):
            c = d["candidates"][name]
            wins = sum(v > b for v, b in zip(c["objective"], base, strict=True))
            want = (f"{mean(c['objective']):.3f} / {mean(c['balanced_accuracy']):.3f} "
                    f"({wins}/{len(base)})")
            assert cell == (f"**{want} kept**" if c["kept"] else want), name
            assert c["kept"] == (wins == len(base))
        thr = d["threshold"]
        wins = sum(y > h for y, h in zip(thr["val_youden"], thr["argmax"], strict=True))
        want = (f"{mean(thr['argmax']):.3f} -> {mean(thr['val_youden']):.3f} "
                f"({wins}/{len(base)})")
        assert cells[5] == (f"**{want} kept**" if thr["chosen"] == "val_youden" else want)
    assert "means over the 2 folds" in text
    assert "balanced accuracy shows what either buys" in text


def test_a_decision_recorded_under_another_rule_is_refused(
        collected: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    _, root, _ = collected
    mod = _module()
    copy = tmp_path / "repo"
    shutil.copytree(root, copy)
    path = copy / "results" / "headline" / "pmnist" / "tuning.json"
    tuning = json.loads(path.read_text())
    m = tuning["models"][0]
    ema = m["decisions"]["candidates"]["ema"]
    ema["kept"] = not ema["kept"]
    path.write_text(json.dumps(tuning))
    with pytest.raises(mod.BuildError, match=rf"tuning.json, {m['model']}, ema: "
                                             r"(kept|not kept) though it won on \d of 2 folds"):
        mod.decisions_block("pmnist")(copy)


def test_a_source_not_measured_yet_says_so(tmp_path: Path) -> None:
    text = _module().headline_block("jpeg")(tmp_path)
    assert text.startswith("Not measured yet: `results/headline/jpeg` holds no results")
    text = _module().decisions_block("jpeg")(tmp_path)
    assert text.startswith("Not measured yet: `results/headline/jpeg` holds no tuning summary")


def test_collect_refuses_an_unfinished_study(collected: tuple[Path, Path, Path],
                                             tmp_path: Path) -> None:
    import shutil

    tmp, _, _ = collected
    run = tmp_path / "R"
    shutil.copytree(tmp / "R", run)
    con = sqlite3.connect(run / "results.db")
    with con:
        con.execute("UPDATE trials SET status = 'failed' WHERE id = (SELECT MIN(id) FROM "
                    "trials)")
    con.close()
    mod = _module()
    with pytest.raises(mod.BuildError, match=r"has unfinished or failed trials .*'failed': 1"):
        mod.collect("pmnist", run, tmp / "T", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_the_anchors_quote_the_headline_like_for_like(collected: tuple[Path, Path, Path]) -> None:
    _, root, folder = collected
    mod = _module()
    rows = mod.headline_anchor_rows(root)
    with open(folder / "results.csv", newline="") as f:
        results = list(csv.DictReader(f))
    assert [r[1] for r in rows] == ["paper-light-k1", "study-light-k1"]
    for r in rows:
        accs = [float(x["accuracy"]) for x in results if x["model"] == r[1]]
        mean, std, _, _ = _t_interval(accs)
        assert r[0] == "this repository (`results/headline/pmnist`)"
        assert r[2] == "28 px, PneumoniaMNIST's images" and r[4] == "3 seeds, mean ± std"
        assert r[5] == f"{mean:.3f} ± {std:.3f}"
        assert "tuned per model (2 trials, 2 folds)" in r[3]
    assert mod.headline_anchor_rows(root.parent / "nothing") == []
    readme = mod.headline_anchors_block(root).splitlines()
    assert any("| Google AutoML Vision | 28 px |" in x and "| 0.946 | 0.991 |" in x
               for x in readme)
    assert any("| Kermany et al. 2018 |" in x for x in readme)
    ours = [x for x in readme if x.startswith("| this repository")]
    assert [x.split(" | ")[1] for x in ours] == ["paper-light-k1", "study-light-k1"]
    assert all("(`results/headline/pmnist`)" in x for x in ours)  # no fixed-recipe rows


def test_the_headline_script_runs_the_whole_pipeline(tmp_path: Path) -> None:
    """scripts/headline.sh (make headline) on a few real X-rays, small settings: tune with
    decisions, run --tuned, collect, rebuild; the README copy gets the table, the repository's
    own files are not touched."""
    import os
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    pneumonia_subset(data / "pneumoniamnist_28_reconstructed.npz", train=160, val=40, test=40)
    root = tmp_path / "root"
    shutil.copytree(ROOT / "results", root / "results")
    (root / "docs").mkdir()
    shutil.copy2(ROOT / "docs" / "results.md", root / "docs" / "results.md")
    shutil.copy2(ROOT / "README.md", root / "README.md")
    before = {p: (ROOT / p).read_bytes() for p in ("README.md", "docs/results.md")}
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "results").rglob("*")}
    env = {**os.environ, "DATA": str(data), "STATE": str(tmp_path / "state"), "ROOT": str(root),
           "LL": str(Path(sys.executable).parent / "lightlayers"), "PY": sys.executable,
           "MODELS": "paper-light-k1,study-light-k1", "BUDGET": "1", "FOLDS": "2",
           "SEEDS": "0,1", "EXTRA": "--set epochs=2 --quiet"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "headline.sh"), "pmnist"], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- results.py: headline-pmnist -->")[1].split("<!-- /")[0]
    assert "| paper-light-k1 | 2,577 |" in block and "| study-light-k1 |" in block
    assert "over 2 seeds per model" in block and "Not measured yet" not in block
    assert "Not measured yet: `results/headline/jpeg`" in readme
    assert "this repository (`results/headline/pmnist`)" in (root / "docs/results.md").read_text()
    assert sorted(p.name for p in (root / "results/headline/pmnist").iterdir()) == [
        "ledger.json", "predictions.csv.gz", "results.csv", "tuning.json"]
    assert {p: (ROOT / p).read_bytes() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "results").rglob("*")} == committed
