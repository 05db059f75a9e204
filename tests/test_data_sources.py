"""Every source type loads into the same train/val/test shape: folders, archives, .npz, IDX,
scikit-learn digits, and the short names."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    MNIST_DIR,
    PNEUMONIA_NPZ,
    image_bytes,
    needs_shared,
    pack,
    save_npz,
    small_npz_arrays,
    write_tree,
)

from lightlayers.data import DataError, Dataset, load_dataset
from lightlayers.data.sources import open_source


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))


def _counts(ds: Dataset) -> dict[str, list[int]]:
    return {
        k: np.bincount(s.labels, minlength=ds.num_classes).tolist() for k, s in ds.splits.items()
    }


SPLIT_TREE = {
    "train/cat": 60,
    "train/dog": 60,
    "val/cat": 30,
    "val/dog": 30,
    "test/cat": 10,
    "test/dog": 12,
}


def test_split_folder_tree_keeps_official_splits(tmp_path: Path) -> None:
    write_tree(tmp_path / "pets", SPLIT_TREE)
    (tmp_path / "pets" / "README.md").write_text("notes")
    (tmp_path / "pets" / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "pets" / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path / "pets", progress=False)
    assert ds.name == "pets" and ds.classes == ("cat", "dog")
    assert _counts(ds) == {"train": [60, 60], "val": [30, 30], "test": [10, 12]}
    train = ds.splits["train"]
    assert train.images.dtype == np.uint8 and train.images.shape == (120, 1, 20, 20)
    assert train.labels.dtype == np.int64
    assert train.ids is not None and train.ids[0] == "train/cat/img0.png"
    assert ds.positive_class == 1 and ds.in_chans == 1 and ds.image_size == 20
    assert ds.identity["sha256"] and ds.identity["cache_path"]


def test_images_match_the_files_pixel_for_pixel(tmp_path: Path) -> None:
    paths = write_tree(tmp_path / "t", {"a": 3, "b": 3})
    ds = load_dataset(tmp_path / "t", val_fraction=0.3, progress=False)
    from PIL import Image

    for split in ds.splits.values():
        assert split.ids is not None
        for img, rel in zip(split.images, split.ids, strict=True):
            expected = np.asarray(Image.open(tmp_path / "t" / rel))
            np.testing.assert_array_equal(img[0], expected)
    assert sum(len(s) for s in ds.splits.values()) == len(paths)


def test_tree_without_split_folders_carves_test_and_val(tmp_path: Path) -> None:
    write_tree(tmp_path / "flat", {"a": 50, "b": 30, "c": 20})
    ds = load_dataset(tmp_path / "flat", seed=3, progress=False)
    sizes = {k: len(s) for k, s in ds.splits.items()}
    assert sizes == {"train": 72, "val": 8, "test": 20}
    assert _counts(ds)["test"] == [10, 6, 4]  # 20% of each class
    assert ds.positive_class is None  # three classes
    assert any("no test split" in n for n in ds.notes)
    all_ids = [i for s in ds.splits.values() for i in (s.ids or ())]
    assert len(all_ids) == len(set(all_ids)) == 100


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".zip", ".tar"])
def test_archive_reads_like_the_folder(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "src" / "pets"
    write_tree(root, SPLIT_TREE)
    (root / "train" / ".DS_Store").write_bytes(b"junk")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.png").write_bytes(b"resource fork, not a png")
    folder = load_dataset(root, progress=False)
    archive = pack(root, tmp_path / f"pets{suffix}", arcname="wrapper")
    packed = load_dataset(archive, progress=False)
    assert packed.name == "pets" and packed.identity["kind"] == "archive"
    assert packed.classes == folder.classes
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(packed.splits[k].images, folder.splits[k].images)
        assert packed.splits[k].ids == folder.splits[k].ids


def test_archive_without_wrapping_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"train/x": 40, "train/y": 40, "test/x": 5, "test/y": 5})
    ds = load_dataset(pack(tmp_path / "t", tmp_path / "flat.zip", arcname=""), progress=False)
    assert _counts(ds)["test"] == [5, 5] and len(ds.splits["val"]) == 8


def test_class_folders_may_nest(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a/scan1": 3, "a/scan2": 2, "b": 5})
    ds = load_dataset(tmp_path / "t", val_fraction=0.2, progress=False)
    assert ds.classes == ("a", "b")
    assert sum(_counts(ds)[k][0] for k in ds.splits) == 5


def test_rgb_images_give_three_channels_grey_ones_one(tmp_path: Path) -> None:
    write_tree(tmp_path / "rgb", {"a": 10, "b": 10}, mode="RGB")
    assert load_dataset(tmp_path / "rgb", val_fraction=0.2, progress=False).in_chans == 3
    # Grey pixels stored as RGB JPEG (as in the chest X-ray archive) count as grey.
    grey_rgb = tmp_path / "grey_rgb"
    for cls in ("a", "b"):
        (grey_rgb / cls).mkdir(parents=True)
        for i in range(10):
            from PIL import Image

            g = np.random.default_rng(i + (cls == "b") * 100).integers(0, 256, (16, 16), np.uint8)
            Image.fromarray(np.stack([g] * 3, -1)).save(grey_rgb / cls / f"{i}.jpg", quality=90)
    ds = load_dataset(grey_rgb, val_fraction=0.2, progress=False)
    assert ds.in_chans == 1
    rgb = (
        load_dataset(grey_rgb, in_chans=3, val_fraction=0.2, progress=False).splits["train"].images
    )
    grey = ds.splits["train"].images
    assert rgb.shape[1] == 3 and all((rgb[:, c] == grey[:, 0]).all() for c in range(3))


@needs_shared
def test_medmnist_npz_keeps_official_splits() -> None:
    with pytest.warns(UserWarning, match="train/val: 8"):
        ds = load_dataset(PNEUMONIA_NPZ, progress=False)
    assert ds.name == "pneumoniamnist_28_reconstructed"
    assert ds.classes == ("normal", "pneumonia") and ds.positive_class == 1
    assert _counts(ds) == {"train": [1214, 3494], "val": [135, 389], "test": [234, 390]}
    assert ds.splits["train"].images.shape == (4708, 1, 28, 28)
    assert ds.splits["val"].ids is None
    # Arrays are kept byte for byte (SHA-256 prefix from the data README).
    import hashlib

    raw = np.ascontiguousarray(ds.splits["test"].images[:, 0]).tobytes()
    assert hashlib.sha256(raw).hexdigest()[:16] == "f936e3b6b29d2ed7"


@pytest.mark.parametrize("shape,chans", [((40, 30), 1), ((40, 30, 3), 3), ((40, 30, 1), 1)])
def test_npz_of_any_size_and_channels(tmp_path: Path, shape: tuple[int, ...], chans: int) -> None:
    arrays = small_npz_arrays({"train": 100, "val": 60, "test": 20}, shape=shape, classes=3)
    ds = load_dataset(save_npz(tmp_path / "mine.npz", **arrays), progress=False)
    assert ds.classes == ("0", "1", "2")
    assert ds.splits["train"].images.shape == (100, chans, 40, 30)
    expected = arrays["val_images"]
    expected = expected[:, None] if expected.ndim == 3 else np.moveaxis(expected, -1, 1)
    np.testing.assert_array_equal(ds.splits["val"].images, expected)
    resized = load_dataset(tmp_path / "mine.npz", size=16, progress=False)
    assert resized.splits["test"].images.shape == (20, chans, 16, 16)


def test_npz_with_only_train_gets_val_and_test_carved(tmp_path: Path) -> None:
    arrays = small_npz_arrays({"train": 200})
    ds = load_dataset(save_npz(tmp_path / "x.npz", **arrays), progress=False)
    assert {k: len(s) for k, s in ds.splits.items()} == {"train": 144, "val": 16, "test": 40}


def test_npz_label_gaps_are_an_error_unless_allowed(tmp_path: Path) -> None:
    arrays = small_npz_arrays({"train": 100, "val": 60, "test": 20})
    for k in ("train", "val", "test"):
        arrays[f"{k}_labels"] = arrays[f"{k}_labels"] * 2  # labels 0 and 2, no class 1
    path = save_npz(tmp_path / "gaps.npz", **arrays)
    with pytest.raises(DataError, match=r"gaps\.npz: class\(es\) 1 have no images in any split"):
        load_dataset(path, progress=False)
    ds = load_dataset(path, allow_missing_classes=True, progress=False)
    assert ds.classes == ("0", "1", "2") and _counts(ds)["test"] == [10, 0, 10]
    s = ds.summary()
    assert s["allow_missing_classes"] is True
    assert s["missing_classes"] == {"train": ["1"], "val": ["1"], "test": ["1"]}


@needs_shared
def test_mnist_idx_gzip() -> None:
    ds = load_dataset(MNIST_DIR, progress=False)
    assert ds.name == "mnist" and ds.classes == tuple("0123456789")
    assert len(ds.splits["test"]) == 10_000
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 60_000
    assert _counts(ds)["test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.splits["train"].images.shape[1:] == (1, 28, 28)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_idx_raw_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, n in (("train", 300), ("t10k", 50)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 9, 9)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 3)
    ds = load_dataset(tmp_path, progress=False)
    assert ds.classes == ("0", "1", "2") and len(ds.splits["test"]) == 50
    assert ds.splits["train"].images.shape[1:] == (1, 9, 9)


@needs_shared
def test_idx_gzip_and_raw_agree(tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
    # A tiny train set keeps the test fast; the test split is the official one either way.
    labels = np.arange(100) % 10
    # Distinct images: identical ones would form one group per class, leaving nothing to carve.
    images = np.random.default_rng(0).integers(0, 256, (100, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    ds = load_dataset(tmp_path, progress=False)
    official = load_dataset(MNIST_DIR, progress=False)
    np.testing.assert_array_equal(ds.splits["test"].images, official.splits["test"].images)


def test_digits_need_no_files() -> None:
    ds = load_dataset("digits", progress=False)
    assert ds.name == "digits" and ds.num_classes == 10
    assert sum(len(s) for s in ds.splits.values()) == 1797
    assert ds.splits["train"].images.shape[1:] == (1, 8, 8)
    assert ds.splits["train"].images.max() == 255  # 0..16 scaled to 0..255


def test_short_name_beats_a_local_folder_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path / "digits", {"a": 5, "b": 5})
    monkeypatch.chdir(tmp_path)
    assert open_source("digits").kind == "digits"
    assert open_source("./digits").kind == "folder"


def test_short_names_mean_official_bytes_not_local_copies() -> None:
    src = open_source("pneumoniamnist")
    assert src.kind == "download"
    assert src.identity == {
        "kind": "download",
        "file": "pneumoniamnist.npz",
        "md5": "28209eda62fecd6e6a2d98b1501bb15f",
    }
    assert src.location == "pneumoniamnist"  # no path, so nothing under ../shared


def test_png_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "t" / cls).mkdir(parents=True)
        for i in range(5):
            a = np.full((8, 8), 257 * (40 * i + (cls == "b")), np.uint16)
            Image.fromarray(a).save(tmp_path / "t" / cls / f"{i}.png")
    ds = load_dataset(tmp_path / "t", val_fraction=0.2, progress=False)
    values = sorted({int(s.images.max()) for s in ds.splits.values()})
    assert max(values) > 150  # 16-bit 41377 -> 161, not clipped to 255


def test_folder_copy_has_same_identity_and_cache(tmp_path: Path) -> None:
    write_tree(tmp_path / "a", {"x": 6, "y": 6})
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy2)
    assert open_source(tmp_path / "a").identity == open_source(tmp_path / "b").identity
    (tmp_path / "b" / "x" / "extra.png").write_bytes(image_bytes(99))
    assert open_source(tmp_path / "a").identity != open_source(tmp_path / "b").identity
