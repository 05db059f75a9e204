"""Hostile outputs: the tool writes only into folders it owns, replaces or deletes only files it
wrote, never writes through a link, and never writes an output into or over an input.

Each row plants the user's files (and traps), runs the real command, and checks the exit code,
the one line on stderr and every protected file by hash (tests/hostile.py)."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from pathlib import Path

import pytest
from hostile import RUN_ARGS, Case, Planted, run_case, run_cli, snapshot

from lightlayers.outputs import MANIFEST


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, hostile_run: Path) -> Path:
    """An ONNX file exported from a copy of the finished digits run."""
    base = tmp_path_factory.mktemp("hostile-model")
    run = base / "run"
    shutil.copytree(hostile_run, run, symlinks=True)
    out = base / "m.onnx"
    done = run_cli(["export", str(run), "--model", "paper-conv", "--seed", "0", "--out",
                    str(out)])
    assert done.returncode == 0, done.stderr
    return out


def _images(folder: Path, n: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (8, 8), color=30 * i).save(folder / f"x{i}.png")
    return folder


def _victim(tmp: Path) -> Path:
    """A file of the user's outside every output folder, which links will point at."""
    v = tmp / "outside" / "victim.txt"
    v.parent.mkdir(parents=True, exist_ok=True)
    v.write_text("the user's own file\n")
    return v


def _seeds(seeds: str) -> list[str]:
    """The finished run's command with other seeds (the same study, extended)."""
    args = list(RUN_ARGS)
    args[args.index("--seeds") + 1] = seeds
    return args


# --- setups -------------------------------------------------------------------------------
def report_into_user_site(tmp: Path, run: Path | None) -> Planted:
    site = tmp / "mysite"
    (site / "figures").mkdir(parents=True)
    (site / "figures" / "holiday.png").write_bytes(b"\x89PNG holiday")
    (site / "figures" / "logo.svg").write_text("<svg/>")
    (site / "table.md").write_text("# my table\n")
    return Planted(["report", str(run), "--out", str(site), "--quiet"], protect=[site])


def run_into_user_dir(tmp: Path, run: Path | None) -> Planted:
    user = tmp / "userdir"
    (user / "report" / "figures").mkdir(parents=True)
    (user / "results.csv").write_text("name,score\nalice,1\n")
    (user / "config.yaml").write_text("mine: true\n")
    (user / "report" / "figures" / "a.png").write_bytes(b"png")
    return Planted([*RUN_ARGS, "--out", str(user)], protect=[user])


def report_out_is_input(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    other = tmp / "other"
    done = run_cli([*_seeds("2"), "--out", str(other)])
    assert done.returncode == 0, done.stderr
    return Planted(["report", str(run), str(other), "--out", str(run), "--quiet"],
                   protect=[run, other])


def report_out_inside_input(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    return Planted(["report", str(run), "--out", str(run / "elsewhere"), "--quiet"],
                   protect=[run])


def export_over_store(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    return Planted(["export", str(run), "--out", str(run / "results.db")], protect=[run])


def export_over_user_file(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    mine = tmp / "notes.onnx"
    mine.write_bytes(b"my own onnx experiments")
    return Planted(["export", str(run), "--out", str(mine)], protect=[mine, run])


def export_onnx_as_pt(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    return Planted(["export", str(run), "--out", str(tmp / "m.pt")], protect=[run])


def export_through_link(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    victim = _victim(tmp)
    (run / "exports").mkdir()
    (run / "exports" / "paper-conv__seed0.onnx").symlink_to(victim)
    return Planted(["export", str(run), "--model", "paper-conv", "--seed", "0"],
                   protect=[victim, run / "exports" / "paper-conv__seed0.onnx"])


def run_through_links(tmp: Path, run: Path | None) -> Planted:
    """A run folder someone hands you, with links planted at the files a rerun writes."""
    assert run is not None
    victim = _victim(tmp)
    (run / "results.csv").unlink()
    (run / "results.csv").symlink_to(victim)
    return Planted([*RUN_ARGS, "--out", str(run)], protect=[victim, run / "results.csv"])


def run_checkpoints_link(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    victim_dir = tmp / "outside"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("mine")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(victim_dir, target_is_directory=True)
    return Planted([*_seeds("0,1,3"), "--out", str(run)], protect=[victim_dir])


def report_through_link(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    victim = _victim(tmp)
    (run / "report").mkdir()
    (run / "report" / "table.md").symlink_to(victim)
    return Planted(["report", str(run), "--quiet"], protect=[victim])


def report_figures_link(tmp: Path, run: Path | None) -> Planted:
    assert run is not None
    victim_dir = tmp / "outside"
    victim_dir.mkdir()
    (victim_dir / "holiday.png").write_bytes(b"png")
    (run / "report").mkdir()
    (run / "report" / "figures").symlink_to(victim_dir, target_is_directory=True)
    return Planted(["report", str(run), "--quiet"], protect=[victim_dir])


def predict_cam_into_input(tmp: Path, run: Path | None, model: Path) -> Planted:
    camin = _images(tmp / "camin")
    return Planted(["predict", str(model), str(camin), "--cam", str(camin), "--quiet"],
                   protect=[camin, model])


def predict_out_into_run(tmp: Path, run: Path | None, model: Path) -> Planted:
    assert run is not None
    imgs = _images(tmp / "imgs")
    return Planted(["predict", str(model), str(imgs), "--out", str(run / "results.db"),
                    "--quiet"], protect=[run, imgs])


def predict_out_over_user_file(tmp: Path, run: Path | None, model: Path) -> Planted:
    imgs = _images(tmp / "imgs")
    mine = tmp / "preds.csv"
    mine.write_text("patient,diagnosis\n1,fine\n")
    return Planted(["predict", str(model), str(imgs), "--out", str(mine), "--quiet"],
                   protect=[mine, imgs])


def predict_cam_link(tmp: Path, run: Path | None, model: Path) -> Planted:
    """A heatmap folder of an earlier prediction, with a link planted at a heatmap's name."""
    imgs = _images(tmp / "imgs")
    cams = tmp / "cams"
    # Digits are 8 px: any map is coarse, so the smallest side is allowed.
    cam = ["--cam", str(cams), "--cam-min-side", "1", "--quiet"]
    done = run_cli(["predict", str(model), str(imgs), *cam])
    assert done.returncode == 0, done.stderr
    victim = _victim(tmp)
    (cams / "x0.png").unlink()
    (cams / "x0.png").symlink_to(victim)
    return Planted(["predict", str(model), str(imgs), *cam], protect=[victim, imgs])


def tune_through_link(tmp: Path, run: Path | None) -> Planted:
    """A tuning folder with a link planted where its store goes."""
    victim = _victim(tmp)
    out = tmp / "tuning"
    out.mkdir()
    (out / MANIFEST).write_text('{"kind": "tune", "files": []}')
    (out / "tune.db").symlink_to(victim)
    return Planted(["tune", "--data", "digits", "--models", "paper-light-k1", "--budget", "1",
                    "--epochs", "1", "--folds", "1", "--out", str(out)], protect=[victim])


CASES = [
    Case("report-out-user-site", report_into_user_site, message=r"not made by lightlayers",
         needs_run=True),
    Case("run-out-user-dir", run_into_user_dir, message=r"not made by lightlayers"),
    Case("report-out-is-an-input", report_out_is_input, message=r"is also an input",
         needs_run=True),
    Case("report-out-inside-input", report_out_inside_input, message=r"inside the input",
         needs_run=True),
    Case("export-out-run-store", export_over_store, message=r"inside the input",
         needs_run=True),
    Case("export-out-user-file", export_over_user_file,
         message=r"exists and was not written by lightlayers", needs_run=True),
    Case("export-onnx-named-pt", export_onnx_as_pt, message=r"name it m\.onnx",
         needs_run=True),
    Case("export-default-through-link", export_through_link, message=r"symbolic link",
         needs_run=True),
    Case("run-results-csv-link", run_through_links, message=r"symbolic link", needs_run=True),
    Case("run-checkpoints-link", run_checkpoints_link, message=r"symbolic link",
         needs_run=True),
    Case("report-file-link", report_through_link, message=r"symbolic link", needs_run=True),
    Case("report-figures-link", report_figures_link, message=r"symbolic link",
         needs_run=True),
    Case("tune-store-link", tune_through_link, message=r"symbolic link"),
]

MODEL_CASES = [
    Case("predict-cam-is-input", predict_cam_into_input, message=r"is also an input"),
    Case("predict-out-run-store", predict_out_into_run, message=r"inside the run folder",
         needs_run=True),
    Case("predict-out-user-file", predict_out_over_user_file,
         message=r"exists and was not written by lightlayers"),
    Case("predict-cam-link", predict_cam_link, message=r"symbolic link"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outputs_refused(case: Case, tmp_path: Path, hostile_run: Path) -> None:
    run_case(case, tmp_path, hostile_run)


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_predict_outputs_refused(case: Case, tmp_path: Path, hostile_run: Path,
                                 model_file: Path) -> None:
    with_model = functools.partial(case.setup, model=model_file)
    run_case(dataclasses.replace(case, setup=with_model), tmp_path, hostile_run)


# --- what the tool may do with its own files ----------------------------------------------
def test_report_rerun_keeps_a_file_it_did_not_write(tmp_path: Path, hostile_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run, symlinks=True)
    first = run_cli(["report", str(run), "--quiet"])
    assert first.returncode == 0, first.stderr
    figures = run / "report" / "figures"
    drawn = sorted(p.name for p in figures.iterdir())
    assert drawn and MANIFEST in os.listdir(run / "report")
    mine = figures / "my-notes.png"
    mine.write_bytes(b"the user's own figure")
    # A figure this tool drew earlier and no longer draws is removed; the user's stays.
    stale = figures / "confusion_retired-model.png"
    stale.write_bytes(b"old")
    again = run_cli(["report", str(run), "--quiet"])
    assert again.returncode == 0, again.stderr
    assert mine.read_bytes() == b"the user's own figure"
    assert stale.exists()  # not in the manifest: not ours to delete
    assert sorted(p.name for p in figures.iterdir()) == sorted([*drawn, mine.name, stale.name])


def test_report_removes_only_its_own_stale_figures(tmp_path: Path, hostile_run: Path) -> None:
    import json

    run = tmp_path / "run"
    shutil.copytree(hostile_run, run, symlinks=True)
    assert run_cli(["report", str(run), "--quiet"]).returncode == 0
    manifest = run / "report" / MANIFEST
    data = json.loads(manifest.read_text())
    stale = run / "report" / "figures" / "confusion_retired-model.png"
    stale.write_bytes(b"drawn by an earlier report")
    data["files"].append("figures/confusion_retired-model.png")
    manifest.write_text(json.dumps(data))
    assert run_cli(["report", str(run), "--quiet"]).returncode == 0
    assert not stale.exists()


def test_run_resumes_its_own_folder_and_a_legacy_one(tmp_path: Path, hostile_run: Path) -> None:
    """A run folder made before manifests existed (results store, no manifest) still resumes,
    and then carries a manifest naming what the run writes."""
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run, symlinks=True)
    (run / MANIFEST).unlink()
    before = snapshot(run / "checkpoints")
    done = run_cli([*RUN_ARGS, "--out", str(run)])
    assert done.returncode == 0, done.stderr
    assert snapshot(run / "checkpoints") == before
    import json

    files = set(json.loads((run / MANIFEST).read_text())["files"])
    assert {"results.db", "results.csv", "config.yaml", "checkpoints"} <= files


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    from lightlayers.outputs import write_atomic

    old = os.umask(0o027)
    try:
        p = write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_report_folder_is_not_taken_for_a_run_folder(tmp_path: Path,
                                                       hostile_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run, symlinks=True)
    site = tmp_path / "site"
    assert run_cli(["report", str(run), "--out", str(site), "--quiet"]).returncode == 0
    before = snapshot(site)
    done = run_cli([*RUN_ARGS, "--out", str(site)])
    assert done.returncode == 2
    assert "holds a lightlayers report folder" in done.stderr
    assert snapshot(site) == before
