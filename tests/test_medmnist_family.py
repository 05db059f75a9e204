"""Every 2D single-label MedMNIST+ set by short name: the table, the refusals, and a planted
download that trains an 8-class study without network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lightlayers.cli import main as cli
from lightlayers.data import DataError, load_dataset, registry
from lightlayers.data.medmnist_table import MEDMNIST, REFUSED
from lightlayers.runfolder.store import ResultsStore

FLAGS = ("bloodmnist", "breastmnist", "dermamnist", "octmnist", "organamnist", "organcmnist",
         "organsmnist", "pathmnist", "pneumoniamnist", "retinamnist", "tissuemnist")
# Nothing listens on port 9 (discard) here: a download from it fails at once, as offline.
OFFLINE = "http://127.0.0.1:9/bloodmnist.npz"


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of this test's own, so a planted download is seen by this test only."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(root))
    return root


def test_every_2d_single_label_set_has_every_size() -> None:
    assert sorted(MEDMNIST) == sorted(FLAGS)
    for flag in FLAGS:
        for size in (28, 64, 128, 224):
            name = flag if size == 28 else f"{flag}-{size}"
            entry = registry.get_named_source(name)
            file = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
            assert entry.filename == file
            assert entry.url == f"https://zenodo.org/records/10519652/files/{file}?download=1"
            assert re.fullmatch(r"[0-9a-f]{32}", entry.md5 or "")
            assert len(entry.classes) == len(set(entry.classes)) >= 2
    md5s = [registry.NAMED_SOURCES[n].md5 for n in registry.NAMED_SOURCES if n != "digits"]
    assert len(md5s) == len(set(md5s)) == 44


def test_pneumoniamnist_entries_are_unchanged() -> None:
    # The values this package shipped before the table held every set.
    assert {s: registry.NAMED_SOURCES[n].md5 for s, n in (
        (28, "pneumoniamnist"), (64, "pneumoniamnist-64"), (128, "pneumoniamnist-128"),
        (224, "pneumoniamnist-224"))} == {
        28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
        128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"}
    e = registry.NAMED_SOURCES["pneumoniamnist-64"]
    assert e.classes == ("normal", "pneumonia") and e.filename == "pneumoniamnist_64.npz"
    assert e.n_samples == {"train": 4708, "val": 524, "test": 624}
    assert e.description == "PneumoniaMNIST 64x64 (MedMNIST v2/+), pediatric chest X-rays"
    assert list(registry.NAMED_SOURCES)[:4] == [
        "pneumoniamnist", "pneumoniamnist-64", "pneumoniamnist-128", "pneumoniamnist-224"]


@pytest.mark.parametrize("name,why", [("chestmnist", "multi-label"),
                                      ("chestmnist-224", "multi-label"),
                                      ("organmnist3d", "3D volumes"),
                                      ("nodulemnist3d-64", "3D volumes")])
def test_sets_that_are_not_2d_single_label_are_refused(name: str, why: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError, match=why):
        load_dataset(name, progress=False)
    assert cli(["data", "summary", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "not supported" in err
    assert set(REFUSED) >= {"chestmnist", "organmnist3d"}


def _rgb_arrays(n: dict[str, int], classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The layout of MedMNIST's RGB sets: (N, 28, 28, 3) uint8 images, (N, 1) uint8 labels,
    every class in every split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in n.items():
        out[f"{split}_images"] = rng.integers(0, 256, (k, 28, 28, 3), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(k) % classes).reshape(-1, 1).astype(np.uint8)
    return out


def _plant(monkeypatch: pytest.MonkeyPatch, cache: Path, name: str = "bloodmnist",
           n: dict[str, int] | None = None) -> Path:
    """A small file in MedMNIST's format where the download goes, and the short name's
    checksum and split sizes pointed at it (the official file is 35 MB, and the network may be
    missing)."""
    n = n or {"train": 96, "val": 32, "test": 64}
    entry = registry.NAMED_SOURCES[name]
    target = cache / "downloads" / (entry.filename or "")
    target.parent.mkdir(parents=True)
    np.savez(target, **_rgb_arrays(n, len(entry.classes)))
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    monkeypatch.setitem(registry.NAMED_SOURCES, name,
                        dataclasses.replace(entry, md5=md5, n_samples=n, url=OFFLINE))
    return target


def test_bloodmnist_planted_file_runs_an_8_class_study(
        monkeypatch: pytest.MonkeyPatch, _own_cache: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _plant(monkeypatch, _own_cache)
    out = tmp_path / "run"
    rc = cli(["run", "--data", "bloodmnist", "--models", "paper-conv", "--epochs", "1",
              "--threads", "1", "--quiet", "--no-report", "--json", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in result["trials"]] == ["done"]
    with ResultsStore(out / "results.db", create=False, readonly=True) as store:
        (trial,) = store.trials()
        preds = store.predictions(trial["id"])
        data = store.meta()["data"]
    assert preds is not None and preds["probs"].shape == (64, 8)
    assert preds["classes"] == list(MEDMNIST["bloodmnist"]["labels"])
    assert data["name"] == "bloodmnist" and data["image_size"] == [3, 28, 28]
    assert np.asarray(trial["confusion"]).shape == (8, 8)
    assert np.asarray(trial["confusion"]).sum() == 64


def test_planted_file_is_verified_and_read_with_its_class_names(
        monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    _plant(monkeypatch, _own_cache, "dermamnist-64", n={"train": 24, "val": 8, "test": 8})
    ds = load_dataset("dermamnist-64", progress=False)
    assert ds.num_classes == 7 and ds.classes[4] == "melanoma"
    # The 8 val images are too few to rank checkpoints: val is carved from train and them.
    assert ds.splits["train"].images.shape[1:] == (3, 28, 28)
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 32



def test_planted_file_that_differs_is_removed(monkeypatch: pytest.MonkeyPatch,
                                              _own_cache: Path) -> None:
    target = _plant(monkeypatch, _own_cache, "breastmnist-224",
                    n={"train": 24, "val": 8, "test": 8})
    target.write_bytes(target.read_bytes()[:-1] + b"x")  # one byte changed, same size
    with pytest.raises(DataError, match="was removed") as e:
        load_dataset("breastmnist-224", progress=False)
    assert str(target) in str(e.value) and not target.exists()


def test_offline_download_fails_in_one_line(
        monkeypatch: pytest.MonkeyPatch, _own_cache: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    entry = registry.NAMED_SOURCES["octmnist-128"]
    monkeypatch.setitem(registry.NAMED_SOURCES, "octmnist-128",
                        dataclasses.replace(entry, url=OFFLINE))
    assert cli(["data", "summary", "octmnist-128"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    target = _own_cache / "downloads" / "octmnist_128.npz"
    assert "could not download" in err and str(target) in err and entry.md5 in err
    assert not target.parent.exists() or list(target.parent.iterdir()) == []
