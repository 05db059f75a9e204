"""A checkpoint is used only when it is the file its trial wrote: training records its SHA-256,
and export, predict, distillation and the report's Grad-CAM figure refuse a file that was
replaced (one line naming the file and the trial, exit 2, nothing written). An export whose
test scores disagree with the trial's recorded ones is refused too; checkpoints follow the
umask like the rest of the run folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import Case, Planted, fresh_run, run_case
from PIL import Image

from lightlayers.deploy.trial import trial_card
from lightlayers.runfolder.checkpoint import save_checkpoint
from lightlayers.runfolder.errors import CheckpointMismatchError
from lightlayers.runfolder.store import ResultsStore
from lightlayers.runfolder.trials import find_trials


def _checkpoint(run: Path, model: str, seed: int) -> Path:
    (t,) = find_trials(run, model, seed)
    return run / t.row["checkpoint"]


def _swap(run: Path) -> Path:
    """Seed 1's paper-conv checkpoint copied over seed 0's (as `cp` would); seed 0's path."""
    seed0, seed1 = _checkpoint(run, "paper-conv", 0), _checkpoint(run, "paper-conv", 1)
    shutil.copyfile(seed1, seed0)
    return seed0


def _refusal(command: str, path: Path) -> str:
    """The one line a swapped seed-0 checkpoint is refused with."""
    return (rf"^lightlayers {command}: error: .*{re.escape(str(path))} does not match what "
            r"trial paper-conv seed 0 wrote \(SHA-256 [0-9a-f]{12}\.\.\. recorded, "
            r"[0-9a-f]{12}\.\.\. found; its metadata names trial paper-conv\|seed=1\|seed\|"
            r"digits@[0-9a-f]+\); restore the file or rerun that trial")


def _absent(*names: str):
    def check(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
        for name in names:
            assert not (tmp / name).exists(), f"{name} was written"
    return check


# --- what training records -----------------------------------------------------------------
def test_training_records_each_checkpoints_sha256_and_trial(hostile_run: Path) -> None:
    with ResultsStore(hostile_run / "results.db", create=False) as store:
        trials = store.trials(status="done")
    assert len(trials) == 4
    for t in trials:
        path = hostile_run / t["checkpoint"]
        assert t["extra"]["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            assert f.metadata()["trial"] == t["key"]


# --- the commands that read checkpoints ------------------------------------------------------
def _export_swapped(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    _swap(run)
    # No --out: the file would go into the run folder, which must stay as it is.
    return Planted(["export", str(run), "--model", "paper-conv", "--seed", "0"], protect=[run])


def _predict_swapped(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    seed0 = _swap(run)
    image = tmp / "one.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(image)
    return Planted(["predict", f"{run}:paper-conv:0", str(image), "--out",
                    str(tmp / "preds.csv")], protect=[run, seed0, image])


def _distill_from_swapped(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    _swap(run)
    return Planted(["run", "--data", "digits", "--models", "paper-light-k1", "--seeds", "0",
                    "--epochs", "1", "--quiet", "--no-report", "--set",
                    f"teacher={run}:paper-conv", "--out", str(tmp / "student")], protect=[run])


def _export_unchanged(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    return Planted(["export", str(run), "--model", "paper-conv", "--seed", "0", "--out",
                    str(tmp / "conv.onnx")], protect=[run])


def _export_probabilities_recorded_otherwise(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    # The store says seed 0 predicted what seed 1 did: its file is not the model it measured.
    with sqlite3.connect(run / "results.db") as db:
        db.execute("UPDATE predictions SET probs = (SELECT p.probs FROM predictions p JOIN trials "
                   "t ON t.id = p.trial_id WHERE t.model = 'paper-conv' AND t.seed = 1) "
                   "WHERE trial_id = (SELECT id FROM trials WHERE model = 'paper-conv' AND "
                   "seed = 0)")
    db.close()
    return Planted(["export", str(run), "--model", "paper-conv", "--seed", "0", "--out",
                    str(tmp / "conv.onnx")], protect=[run])


def _export_scores_recorded_otherwise(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    # A trial that stored no probabilities: the store says it scored 0.01 more than its
    # weights do on the test split.
    with sqlite3.connect(run / "results.db") as db:
        tid = "(SELECT id FROM trials WHERE model = 'paper-conv' AND seed = 0)"
        db.execute(f"UPDATE trial_metrics SET value = value + 0.01 WHERE name = 'accuracy' AND "
                   f"trial_id = {tid}")
        db.execute(f"DELETE FROM predictions WHERE trial_id = {tid}")
    db.close()
    return Planted(["export", str(run), "--model", "paper-conv", "--seed", "0", "--out",
                    str(tmp / "conv.onnx")], protect=[run])


def _exported(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert (tmp / "conv.onnx").is_file(), done.stderr
    assert f"wrote {tmp / 'conv.onnx'}" in done.stdout
    assert "not compared" not in done.stdout  # a CPU trial's scores are compared


@pytest.mark.parametrize("command,setup,absent", [
    ("export", _export_swapped, ("run/exports",)),
    ("predict", _predict_swapped, ("preds.csv",)),
    ("run", _distill_from_swapped, ("student",)),
], ids=["export", "predict", "distillation"])
def test_a_swapped_checkpoint_is_refused_in_one_line_naming_it(
        command: str, setup, absent: tuple[str, ...], hostile_run: Path, tmp_path: Path) -> None:
    # The private copy of the run (hostile.fresh_run) is tmp_path/run.
    seed0 = tmp_path / "run" / _checkpoint(hostile_run, "paper-conv", 0).relative_to(hostile_run)
    run_case(Case(f"{command}-swapped-checkpoint", setup, code=2, needs_run=True,
                  message=_refusal(command, seed0), check=_absent(*absent)),
             tmp_path, hostile_run)


def test_an_unchanged_run_still_exports(hostile_run: Path, tmp_path: Path) -> None:
    run_case(Case("export-unchanged", _export_unchanged, code=0, needs_run=True,
                  one_line=False, check=_exported), tmp_path, hostile_run)


def test_an_export_predicting_otherwise_than_recorded_is_refused_before_writing(
        hostile_run: Path, tmp_path: Path) -> None:
    run_case(Case("export-probabilities-differ", _export_probabilities_recorded_otherwise,
                  code=2, needs_run=True, check=_absent("conv.onnx"),
                  message=r"^lightlayers export: error: the fp32 onnx export of paper-conv seed 0 "
                          r"predicts otherwise on the \d+ test images than the trial recorded "
                          r"\(a probability differs by \S+ > 1e-04\); nothing written"),
             tmp_path, hostile_run)


def test_an_export_scoring_otherwise_than_recorded_is_refused_before_writing(
        hostile_run: Path, tmp_path: Path) -> None:
    run_case(Case("export-scores-differ", _export_scores_recorded_otherwise, code=2,
                  needs_run=True, check=_absent("conv.onnx"),
                  message=r"^lightlayers export: error: the fp32 onnx export of paper-conv seed 0 "
                          r"scores otherwise on the \d+ test images than the trial recorded "
                          r"\(accuracy 0\.\d{6}, recorded 0\.\d{6}; tolerance 1e-06 accuracy, "
                          r"1e-04 AUC\); nothing written"),
             tmp_path, hostile_run)


# --- the one verification, in process ---------------------------------------------------------
def test_the_report_grad_cam_figure_names_the_swapped_file(hostile_run: Path,
                                                           tmp_path: Path) -> None:
    from lightlayers.report.figures import cam_figure
    from lightlayers.report.load import load_run

    run = fresh_run(hostile_run, tmp_path)
    seed0, seed1 = _checkpoint(run, "paper-conv", 0), _checkpoint(run, "paper-conv", 1)
    a, b = seed0.read_bytes(), seed1.read_bytes()
    seed0.write_bytes(b)  # exchanged: whichever seed the figure chooses is not its own file
    seed1.write_bytes(a)
    figure, why = cam_figure(load_run(run), "paper-conv")
    assert figure is None
    assert why is not None and " does not match what trial paper-conv seed " in why
    assert str(seed0) in why or str(seed1) in why


def test_a_trial_recorded_without_a_sha256_is_checked_by_its_metadata(
        hostile_run: Path, tmp_path: Path) -> None:
    run = fresh_run(hostile_run, tmp_path)
    with sqlite3.connect(run / "results.db") as db:
        db.execute("UPDATE trials SET extra = json_remove(extra, '$.checkpoint_sha256') "
                   "WHERE model = 'paper-conv'")
    db.close()
    (t,) = find_trials(run, "paper-conv", 0)
    assert "checkpoint_sha256" not in t.extra
    assert t.build_model() is not None  # its own file: accepted
    seed0 = _swap(run)
    (t,) = find_trials(run, "paper-conv", 0)
    with pytest.raises(CheckpointMismatchError) as e:
        t.build_model()
    message = str(e.value)
    assert message.startswith(f"{seed0} does not match what trial paper-conv seed 0 wrote "
                              "(its metadata names trial paper-conv|seed=1|seed|digits@")
    assert "SHA-256" not in message and "\n" not in message


def test_a_changed_byte_is_found_and_each_file_is_hashed_once(
        hostile_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightlayers.models.weights as weights

    hashed: list[Path] = []
    real = weights.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(weights, "sha256_file", counting)
    run = fresh_run(hostile_run, tmp_path)
    (t,) = find_trials(run, "paper-conv", 0)
    model = t.build_model()
    trial_card(t, model)
    t.checkpoint_metadata()
    assert t.checkpoint_sha256 == t.extra["checkpoint_sha256"]
    (again,) = find_trials(run, "paper-conv", 0)
    again.build_model()
    assert hashed == [t.checkpoint]

    # The same size and metadata, one weight's byte changed: only the SHA-256 tells.
    path = t.checkpoint
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointMismatchError, match=r"\(SHA-256 [0-9a-f]{12}\.\.\. recorded, "
                                          r"[0-9a-f]{12}\.\.\. found\); restore the file"):
        again.build_model()


def test_an_unreadable_file_is_refused_as_not_the_trials(hostile_run: Path,
                                                         tmp_path: Path) -> None:
    run = fresh_run(hostile_run, tmp_path)
    path = _checkpoint(run, "paper-light-k1", 1)
    path.write_bytes(b"not a checkpoint")
    (t,) = find_trials(run, "paper-light-k1", 1)
    with pytest.raises(CheckpointMismatchError, match="it is no readable safetensors file"):
        t.checkpoint_metadata()


# --- file mode -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_checkpoint_follows_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    # A killed attempt's leftover, made 0600 as temporary files are, two minutes ago.
    leftover = path.with_name(f".{path.name}.k3x9q_1.tmp")
    leftover.write_bytes(b"partial")
    leftover.chmod(0o600)
    os.utime(leftover, (time.time() - 120, time.time() - 120))
    old = os.umask(umask)
    try:
        save_checkpoint(torch.nn.Linear(2, 2), path, {"trial": "key-1"})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert not leftover.exists()


def test_a_studys_checkpoints_have_the_run_folders_mode(hostile_run: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (hostile_run / "checkpoints").iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_the_recorded_sha256_is_in_the_store_as_json(hostile_run: Path) -> None:
    # Readers outside lightlayers (sqlite3, scripts) find it under the trial's extra.
    with sqlite3.connect(hostile_run / "results.db") as db:
        rows = db.execute("SELECT extra FROM trials WHERE status = 'done'").fetchall()
    db.close()
    assert all(re.fullmatch(r"[0-9a-f]{64}", json.loads(r[0])["checkpoint_sha256"])
               for r in rows)
