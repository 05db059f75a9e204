"""Decisions on the tuning's validation folds (lightlayers tune --decide): EMA, TTA, longer
training and the threshold are kept only where the folds say so, and run --tuned uses them."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import pneumonia_subset

from lightlayers.cli import main
from lightlayers.decisions import NotApplicable, decide

pytest.importorskip("optuna")


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Ev:
    labels: np.ndarray
    probs: np.ndarray
    loss: float = 0.0


def _binary(pos_scores: np.ndarray, labels: np.ndarray) -> Ev:
    return Ev(labels, np.stack([1 - pos_scores, pos_scores], 1))


# --- the rules, on evaluations made by hand --------------------------------------------------
def test_a_candidate_is_kept_only_when_it_beats_the_base_on_the_folds() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)

    def folds(shift: float) -> list[Ev]:
        # Positives score `shift` higher than negatives, plus noise: the AUC grows with it.
        return [_binary(np.clip(0.5 + (labels - 0.5) * shift + rng.normal(0, .2, 40), 0, 1),
                        labels) for _ in range(3)]

    asked: list[dict] = []

    def run(extra: dict) -> list[Ev]:
        asked.append(extra)
        if "tta" in extra:
            raise NotApplicable("no augmentation to draw views from")
        return folds({(): 0.2, ("ema",): 0.6, ("epochs",): 0.0}[tuple(extra)])

    def auc(ev: Ev) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(ev.labels, ev.probs[:, 1]))

    d = decide(run, auc, maximize=True, epochs=20, positive_class=1, num_classes=2)
    assert asked == [{}, {"ema": 0.999}, {"tta": 4}, {"epochs": 40}]
    assert d["candidates"]["ema"]["kept"] and d["candidates"]["ema"]["mean"] > d["base"]["mean"]
    assert not d["candidates"]["epochs"]["kept"]
    assert d["candidates"]["tta"] == {"settings": {"tta": 4}, "kept": False,
                                      "not_applicable": "no augmentation to draw views from"}
    assert d["settings"].get("ema") == 0.999 and "epochs" not in d["settings"]
    # Minimising the negated AUC keeps the same candidate.
    d = decide(run, lambda ev: -auc(ev), maximize=False, epochs=20, positive_class=1,
               num_classes=2)
    assert d["candidates"]["ema"]["kept"]


def test_better_on_average_but_not_on_every_fold_is_not_kept() -> None:
    labels = np.array([0, 1] * 5)
    probs = np.tile([0.4, 0.6], (10, 1))
    # The objective of a fold is carried as its loss here, to be set exactly.
    values = {(): [0.90, 0.90, 0.90], ("ema",): [0.99, 0.99, 0.89],
              ("epochs",): [0.91, 0.92, 0.91]}

    def run(extra: dict) -> list[Ev]:
        if "tta" in extra:
            raise NotApplicable("no augmentation to draw views from")
        return [Ev(labels, probs, v) for v in values[tuple(extra)]]

    d = decide(run, lambda ev: ev.loss, maximize=True, epochs=20, positive_class=1,
               num_classes=2)
    ema, epochs = d["candidates"]["ema"], d["candidates"]["epochs"]
    assert ema["mean"] > epochs["mean"] > d["base"]["mean"]
    assert not ema["kept"] and epochs["kept"] and d["settings"] == {"epochs": 40}


def test_the_threshold_is_chosen_on_the_other_folds_and_judged_by_balanced_accuracy() -> None:
    labels = np.array([0] * 30 + [1] * 30)
    # Every positive scores 0.35-0.45, every negative 0.05-0.15: at 0.5 all are called
    # negative (balanced accuracy 0.5); a threshold between the groups separates them.
    scores = np.r_[np.linspace(.05, .15, 30), np.linspace(.35, .45, 30)]
    base = [_binary(scores, labels) for _ in range(3)]
    d = decide(lambda extra: base, lambda ev: 0.0, True, 20, 1, 2)
    thr = d["threshold"]
    assert thr["argmax"] == [0.5, 0.5, 0.5] and thr["val_youden"] == [1.0, 1.0, 1.0]
    assert all(.15 < t < .35 for t in thr["thresholds"])
    assert thr["chosen"] == "val_youden" and d["settings"]["threshold"] == "val_youden"
    # Scores already split at 0.5: Youden's J buys nothing, argmax stays.
    split = [_binary(np.r_[np.linspace(.1, .3, 30), np.linspace(.7, .9, 30)], labels)] * 3
    d = decide(lambda extra: split, lambda ev: 0.0, True, 20, 1, 2)
    assert d["threshold"]["chosen"] == "argmax" and "threshold" not in d["settings"]
    # More than two classes: no threshold to choose.
    d = decide(lambda extra: split, lambda ev: 0.0, True, 20, None, 10)
    assert d["threshold"]["chosen"] == "argmax" and "not_applicable" in d["threshold"]


# --- the real path: chest X-rays, tune --decide, run --tuned ---------------------------------
@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, dict]:
    root = tmp_path_factory.mktemp("decide")
    data = pneumonia_subset(root / "pneumoniamnist_small.npz", train=160, val=40, test=40)
    argv = ["tune", "--data", str(data), "--models", "paper-light-k1", "--protocol",
            "improved", "--set", "epochs=2", "--folds", "2", "--budget", "2", "--threads", "1",
            "--out", str(root / "T")]
    code, out, err = cli([*argv, "--decide", "--json"])
    assert code == 0, err
    return argv, root / "T", json.loads(out)


def _meta(folder: Path) -> dict:
    con = sqlite3.connect(folder / "tune.db")
    try:
        return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM "
                                                          "lightlayers_tune")}
    finally:
        con.close()


def test_decisions_are_made_on_the_folds_and_recorded_with_their_numbers(
        decided: tuple[list[str], Path, dict]) -> None:
    _, folder, result = decided
    (m,) = result["models"]
    d = _meta(folder)["decisions"]["paper-light-k1"]
    assert d["params"] == m["best"]["params"] and m["decided"] == d["settings"]
    # The base is the best trial trained again with the search's fold seeds: the same values.
    from lightlayers.tuned import tune_summary

    (summary,) = tune_summary(folder)["models"]
    assert d["base"]["objective"] == pytest.approx(summary["best"]["fold_values"], abs=1e-6)
    for name, c in d["candidates"].items():
        if "not_applicable" in c:
            continue
        assert len(c["objective"]) == 2 and len(c["balanced_accuracy"]) == 2
        assert c["kept"] == all(v > b for v, b in zip(c["objective"], d["base"]["objective"],
                                                      strict=True)), name
        assert (name in d["settings"]) == c["kept"], name
    assert d["candidates"]["epochs"]["settings"] == {"epochs": 4}
    thr = d["threshold"]
    assert len(thr["argmax"]) == len(thr["val_youden"]) == 2
    assert thr["chosen"] == ("val_youden" if all(
        y > h for y, h in zip(thr["val_youden"], thr["argmax"], strict=True)) else "argmax")
    # Nothing of the test split was used or recorded.
    assert "test" not in json.dumps(d).lower()


def test_decisions_are_made_once_and_shown_in_the_folder_table(
        decided: tuple[list[str], Path, dict]) -> None:
    argv, folder, _ = decided
    before = _meta(folder)["decisions"]
    code, _, err = cli([*argv, "--decide"])
    assert code == 0, err
    assert "deciding" not in err and _meta(folder)["decisions"] == before
    code, out, err = cli(["tune", str(folder)])
    assert code == 0, err
    assert "decided on the folds: base " in out
    code, _, err = cli(["tune", str(folder), "--decide"])
    assert code == 2 and "rerun it (the same YAML file or flags, and --out) with --decide" in err
    assert len(err.strip().splitlines()) == 1
    assert max(map(len, out.splitlines())) <= 80


def test_run_tuned_trains_with_the_decided_settings(decided: tuple[list[str], Path, dict],
                                                    tmp_path: Path) -> None:
    from lightlayers.runfolder.store import ResultsStore

    argv, folder, result = decided
    data = argv[argv.index("--data") + 1]
    (m,) = result["models"]
    code, _, err = cli(["run", "--data", data, "--tuned", str(folder), "--protocol", "improved",
                        "--set", "epochs=2", "--seeds", "0", "--out", str(tmp_path / "R"),
                        "--threads", "1",
                        "--quiet", "--no-report"])
    assert code == 0, err
    with ResultsStore(tmp_path / "R" / "results.db", create=False) as store:
        (t,) = store.trials()
    assert t["config"]["tuned"]["decided"] == m["decided"]
    proto = t["extra"]["protocol"]
    decided_settings = m["decided"]
    assert proto["threshold"] == decided_settings.get("threshold", "argmax")
    assert proto["ema"] == decided_settings.get("ema")
    assert proto["tta"] == decided_settings.get("tta", 0)
    assert proto["epochs"] == decided_settings.get("epochs", 2)
    from lightlayers.report.table import settings_sentence

    with ResultsStore(tmp_path / "R" / "results.db", create=False) as store:
        said = settings_sentence(store.meta())
    assert said == (f"settings: tuned (budget 2, 2 folds, auc; EMA, TTA, epochs and threshold "
                    f"decided on the same folds) from {folder}")


def test_a_base_that_no_longer_trains_is_one_line(decided: tuple[list[str], Path, dict],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions on a copy of the folder whose model is not decided yet: when its best
    settings fail to train again (a non-finite loss, say), the command ends in one line and
    records no decision."""
    import shutil

    import lightlayers.tune as tune
    from lightlayers.train import TrialError

    argv, folder, _ = decided
    copy = tmp_path / "T"
    shutil.copytree(folder, copy)
    con = sqlite3.connect(copy / "tune.db")
    with con:
        con.execute("DELETE FROM lightlayers_tune WHERE key = 'decisions'")
    con.close()
    real = tune.fold_evaluations

    def failing(cfg, model, ds, folds, device, seed=0, weights=None, extra=None):  # type: ignore[no-untyped-def]
        if not extra:
            raise TrialError("the training loss is nan at epoch 1")
        return real(cfg, model, ds, folds, device, seed, weights, extra)

    monkeypatch.setattr(tune, "fold_evaluations", failing)
    out = argv[argv.index("--out") + 1]
    code, _, err = cli([*[x if x != out else str(copy) for x in argv], "--decide"])
    assert code == 2, err
    errors = [x for x in err.splitlines() if "error" in x]
    assert errors == [
        "lightlayers tune: error: paper-light-k1: its best tuned settings failed to train again "
        "on the folds (the training loss is nan at epoch 1); nothing was decided for it"]
    assert "Traceback" not in err
    assert "decisions" not in _meta(copy)
