"""A run folder is bound to its data's content: changed data is refused with the first results
and checkpoints intact, the same data by another path spelling resumes, no two trials share a
checkpoint, undecodable images can be skipped and are listed, absurd sizes are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from data_fixtures import write_tree

from lightlayers.cli import main as cli
from lightlayers.runfolder.checkpoint import checkpoint_name, save_checkpoint
from lightlayers.runfolder.store import ResultsStore
from lightlayers.spec import TrialSpec

MODEL = "paper-light-k1"
COUNTS = {"train/a": 24, "train/b": 24, "test/a": 8, "test/b": 8}


def _run(data: str | Path, out: Path, *extra: str) -> int:
    return cli(["run", "--data", str(data), "--models", MODEL, "--epochs", "1", "--size", "16",
                "--in-chans", "1", "--quiet", "--no-report", "--out", str(out), *extra])


def _rows(out: Path) -> list[dict]:
    with ResultsStore(out / "results.db", create=False) as store:
        return store.trials()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data" / "shapes"
    write_tree(root, COUNTS)
    return root


def test_changed_folder_is_refused_and_the_first_checkpoint_kept(folder, tmp_path, capfd):
    out = tmp_path / "run"
    assert _run(folder, out) == 0
    (first,) = _rows(out)
    ckpt = out / first["checkpoint"]
    before = ckpt.read_bytes()
    write_tree(folder, {"train/a": 10}, name="extra{i}.png")  # 10 more images, same path
    capfd.readouterr()
    assert _run(folder, out) == 2
    err = capfd.readouterr().err
    assert "was made with other data" in err and "--out" in err and "Traceback" not in err
    assert "10 file(s) added, 0 removed, 0 modified" in err
    assert len(_rows(out)) == 1  # nothing recorded for the changed data
    assert ckpt.read_bytes() == before


def test_same_data_by_another_spelling_of_its_path_resumes(folder, tmp_path, capfd,
                                                           monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(folder.parent)
    assert _run("shapes", out) == 0
    capfd.readouterr()
    assert cli(["run", "--data", str(folder) + os.sep, "--models", MODEL, "--epochs", "1",
                "--size", "16", "--in-chans", "1", "--no-report", "--out", str(out)]) == 0
    assert "1 trial(s) already done" in capfd.readouterr().err
    assert len(_rows(out)) == 1


def test_no_two_trials_share_a_checkpoint(tmp_path):
    a = checkpoint_name(TrialSpec(MODEL, 0, "seed"), "shapes@aaaaaaaaaaaa")
    b = checkpoint_name(TrialSpec(MODEL, 0, "seed"), "shapes@bbbbbbbbbbbb")
    assert a != b
    model = torch.nn.Linear(2, 2)
    path = tmp_path / a
    save_checkpoint(model, path, {"trial": "key-1"})
    before = path.read_bytes()
    save_checkpoint(model, path, {"trial": "key-1"})  # the same trial's retry may replace it
    from lightlayers.runfolder.store import StoreError

    with pytest.raises(StoreError, match="another trial"):
        save_checkpoint(torch.nn.Linear(2, 2), path, {"trial": "key-2"})
    assert path.read_bytes() == before


def test_undecodable_images_are_skipped_and_listed(folder, tmp_path, capfd):
    bad = folder / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert _run(folder, tmp_path / "strict") == 2
    err = capfd.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    out = tmp_path / "lenient"
    assert _run(folder, out, "--on-bad-image", "skip") == 0
    listed = (out / "skipped_images.csv").read_text()
    assert "broken.png" in listed
    (row,) = _rows(out)
    assert row["status"] == "done"
    capfd.readouterr()
    assert cli(["report", str(out)]) == 0
    assert "1 undecodable image file(s) were skipped" in capfd.readouterr().out
    html = (out / "report" / "report.html").read_text()
    assert "skipped_images.csv" in html and "broken.png" in html


@pytest.mark.parametrize("size", ["0", "-3", "100000"])
def test_absurd_size_is_one_clear_line(folder, tmp_path, capfd, size):
    assert _run(folder, tmp_path / "r", "--size", size) == 2
    err = capfd.readouterr().err.strip()
    assert "size: must be 8..1024 pixels" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_touched_files_are_the_same_data_modified_ones_are_named(folder, tmp_path, capfd):
    out = tmp_path / "run"
    assert _run(folder, out) == 0
    img = sorted((folder / "train" / "a").iterdir())[0]
    os.utime(img, ns=(1, 1))  # same bytes, another mtime
    capfd.readouterr()
    assert cli(["run", "--data", str(folder), "--models", MODEL, "--epochs", "1", "--size", "16",
                "--in-chans", "1", "--no-report", "--out", str(out)]) == 0
    assert "1 trial(s) already done" in capfd.readouterr().err
    other = sorted((folder / "train" / "b").iterdir())[0]
    img.write_bytes(other.read_bytes())  # other bytes under the same name
    assert _run(folder, out) == 2
    assert "0 file(s) added, 0 removed, 1 modified" in capfd.readouterr().err


def test_folder_split_by_an_older_patient_rule_is_refused_as_other_data(folder, tmp_path,
                                                                        capfd):
    """A run folder made before NORMAL files were grouped by patient recorded the old pattern
    and other val members: it is refused with the usual message, saying what differs."""
    out = tmp_path / "run"
    assert _run(folder, out) == 0
    with ResultsStore(out / "results.db") as store:
        fp = store.meta()["data_fingerprint"]
        fp["split"]["patient_pattern"] = r"person(\d+)_"
        fp["split"]["members"]["val"] = "5:0000000000000000"
        store.set_meta(data_fingerprint=fp)
    capfd.readouterr()
    assert _run(folder, out) == 2
    err = capfd.readouterr().err
    assert "was made with other data" in err and "--out NEW_FOLDER" in err
    assert "it is split differently (patient_pattern: 'person(\\\\d+)_' -> " in err
    assert "other images in val" in err and "Traceback" not in err
