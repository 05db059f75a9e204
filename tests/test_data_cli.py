"""``lightlayers data list`` and ``lightlayers data summary``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import CHEST_TAR, PNEUMONIA_NPZ, needs_shared, session_cache, write_tree

from lightlayers.cli import main
from lightlayers.data.splits import DEFAULT_PATIENT_PATTERN


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(session_cache(tmp_path_factory)))


def test_list_shows_every_short_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "pneumoniamnist",
        "pneumoniamnist-64",
        "pneumoniamnist-128",
        "pneumoniamnist-224",
        "digits",
    ):
        assert name in out
    assert "d6a3c71de1b945ea11211b03746c1fe1" in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][-1] == "digits" and rows[0]["md5"]


@needs_shared
def test_summary_json_of_the_chest_archive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "summary", str(CHEST_TAR), "--size", "64", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else
    train, val, test = (s["splits"][k] for k in ("train", "val", "test"))
    assert train["NORMAL"] + val["NORMAL"] == 1341 and train["PNEUMONIA"] + val["PNEUMONIA"] == 3875
    assert test == {"NORMAL": 234, "PNEUMONIA": 390}
    assert s["classes"] == ["NORMAL", "PNEUMONIA"] and s["image_size"] == [1, 64, 64]
    p = s["patient_grouping"]
    assert s["patient_overlap"] == 0 and p["pattern"] == DEFAULT_PATIENT_PATTERN
    # Patients per split for both classes; the carved pair shares none, the official
    # train/test split shares PNEUMONIA patients as published.
    assert set(p["per_split"]) == {"train", "val", "test"}
    assert all(set(v) == {"NORMAL", "PNEUMONIA"} for v in p["per_split"].values())
    assert p["overlap"]["train/val"] == 0 and p["overlap"]["train/test"] > 0
    assert p["carved_pairs"] == ["train/val"]
    assert s["duplicates"]["train/val"] == 0 and Path(s["cache"]).is_dir()


@needs_shared
def test_summary_table_of_the_chest_archive_reports_patients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data", "summary", str(CHEST_TAR), "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "patients per split: train NORMAL " in out
    assert "patients in two splits: train/val 0 (carved apart); train/test " in out


@needs_shared
def test_summary_json_of_pneumoniamnist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match="identical images"):
        assert main(["data", "summary", str(PNEUMONIA_NPZ), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {k: sum(v.values()) for k, v in s["splits"].items()} == {
        "train": 4708,
        "val": 524,
        "test": 624,
    }
    assert s["splits"]["val"] == {"normal": 135, "pneumonia": 389}
    assert s["duplicates"] == {"train/val": 8, "train/test": 0, "val/test": 0}
    assert s["image_size"] == [1, 28, 28] and s["patient_grouping"] is None


def test_summary_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_tree(tmp_path / "pets", {"cat": 20, "dog": 30})
    assert main(["data", "summary", str(tmp_path / "pets"), "--size", "8", "--in-chans", "3"]) == 0
    out = capsys.readouterr().out
    assert "pets: 3x8x8, 2 classes" in out and "cat" in out and "dog" in out
    assert "val carved from train" in out


def test_summary_options_reach_the_loader(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "data",
        "summary",
        "digits",
        "--json",
        "--resplit",
        "0.5",
        "--val-fraction",
        "0.2",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    sizes = {k: sum(v.values()) for k, v in s["splits"].items()}
    assert (
        abs(sizes["test"] - 1797 / 2) < 10 and abs(sizes["val"] - 0.2 * sizes["train"] / 0.8) < 10
    )
    assert s["identity"]["options"]["seed"] == 3


def test_data_errors_become_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"only": 10})
    assert main(["data", "summary", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightlayers data: error: ") and "at least 2 class folders" in err
    assert "Traceback" not in err
    assert main(["data", "summary", "nosuchname", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "short name" in captured.err


def test_importing_the_data_package_does_not_import_sklearn() -> None:
    code = "import sys, lightlayers.data; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
