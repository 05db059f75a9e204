"""Bad input gets a DataError that names the file and the fix, and never a partial dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes, pack, save_npz, small_npz_arrays, write_tree

from lightlayers.data import DataError, load_dataset
from lightlayers.data.cache import cache_root


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))


def _nothing_cached() -> bool:
    d = cache_root() / "datasets"
    return not d.exists() or not any(d.iterdir())


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --- image trees -------------------------------------------------------------------------------


def test_corrupt_images_are_listed_and_nothing_is_cached(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    (tmp_path / "t" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    truncated = image_bytes(5, size=(64, 64), fmt="JPEG")
    (tmp_path / "t" / "b" / "cut.jpg").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "t", progress=False)
    msg = str(e.value)
    assert "2 image(s) cannot be decoded" in msg
    assert "a/broken.png" in msg and "b/cut.jpg" in msg and "on_bad_image='skip'" in msg
    assert _nothing_cached()


def test_skip_bad_images_reports_how_many(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    (tmp_path / "t" / "a" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset(tmp_path / "t", on_bad_image="skip", progress=False)
    assert sum(len(s) for s in ds.splits.values()) == 40
    assert any("skipped 1 unreadable image(s): a/broken.png" in n for n in ds.notes)
    # The cached entry remembers the skipped file, so strict mode still refuses it.
    with pytest.raises(DataError, match=r"a/broken\.png"):
        load_dataset(tmp_path / "t", progress=False)


def test_skipping_every_image_of_a_class_is_an_error(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 20})
    (tmp_path / "t" / "b").mkdir()
    (tmp_path / "t" / "b" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"class\(es\) b have no images"):
        load_dataset(tmp_path / "t", on_bad_image="skip", progress=False)


def test_empty_class_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"train/a": 5, "train/b": 5, "test/a": 2, "test/b": 2})
    (tmp_path / "t" / "train" / "c").mkdir()
    (tmp_path / "t" / "train" / "c" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match=r"train/: empty class folder\(s\) c"):
        load_dataset(tmp_path / "t", progress=False)


def test_empty_class_folder_inside_an_archive(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 5, "b": 5})
    (tmp_path / "t" / "c").mkdir()
    with pytest.raises(DataError, match="empty class folder"):
        load_dataset(pack(tmp_path / "t", tmp_path / "t.tar.gz"), progress=False)


def test_class_sets_differ_between_splits(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"train/a": 5, "train/b": 5, "test/a": 2, "test/c": 2})
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "t", progress=False)
    assert "test/ differ from train/" in str(e.value)
    assert "missing: b" in str(e.value) and "extra: c" in str(e.value)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"only": 10})
    (tmp_path / "t" / "other").mkdir()  # an empty folder is not a second class
    (tmp_path / "t" / "other" / "README").write_text("x")
    with pytest.raises(DataError, match="empty class folder"):
        load_dataset(tmp_path / "t", progress=False)
    write_tree(tmp_path / "v", {"only": 10})
    with pytest.raises(DataError, match="at least 2 class folders, found 1"):
        load_dataset(tmp_path / "v", progress=False)
    write_tree(tmp_path / "u", {"train/only": 10, "test/only": 3})
    with pytest.raises(DataError, match="at least 2 class folders, found 1 \\(only\\)"):
        load_dataset(tmp_path / "u", progress=False)


def test_image_outside_a_class_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"train/a": 5, "train/b": 5})
    (tmp_path / "t" / "train" / "loose.png").write_bytes(image_bytes(1))
    with pytest.raises(DataError, match=r"train/loose\.png: image is not inside a class folder"):
        load_dataset(tmp_path / "t", progress=False)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files found"):
        load_dataset(tmp_path / "t", progress=False)


def test_native_size_needs_equal_sizes(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 5, "b": 5})
    (tmp_path / "t" / "b" / "big.png").write_bytes(image_bytes(7, size=(30, 25)))
    with pytest.raises(DataError, match="--size PX"):
        load_dataset(tmp_path / "t", progress=False)
    ds = load_dataset(tmp_path / "t", size=16, val_fraction=0.2, progress=False)
    assert ds.image_size == 16


def test_damaged_archive(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 5, "b": 5})
    data = pack(tmp_path / "t", tmp_path / "t.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz: cannot read the archive"):
        load_dataset(tmp_path / "cut.tar.gz", progress=False)


def test_path_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing" / "data.tar.gz", progress=False)


def test_unknown_short_name_suggests_close_ones() -> None:
    with pytest.raises(DataError, match="Did you mean pneumoniamnist"):
        load_dataset("pneumoniamnst", progress=False)


def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(tmp_path / "data.parquet", progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": 0}, "size must be"),
        ({"in_chans": 2}, "in_chans must be"),
        ({"resize": "pad"}, "resize: must be"),
        ({"on_bad_image": "ignore"}, "on_bad_image must be"),
        ({"val_fraction": 0.0}, "val_fraction must be"),
        ({"resplit": 1.0}, "resplit"),
        ({"patient_pattern": "person(("}, "not a regex"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_dataset("digits", progress=False, **kwargs)  # type: ignore[arg-type]


# --- .npz --------------------------------------------------------------------------------------


def _npz(tmp_path: Path, **changes: np.ndarray | None) -> Path:
    arrays = small_npz_arrays({"train": 60, "val": 60, "test": 20})
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    return save_npz(tmp_path / "d.npz", **arrays)


def test_npz_missing_train_keys(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(_npz(tmp_path, train_labels=None), progress=False)
    assert "missing key(s) train_labels" in str(e.value) and "found:" in str(e.value)


def test_npz_images_without_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has test_images but no test_labels"):
        load_dataset(_npz(tmp_path, test_labels=None), progress=False)


def test_npz_negative_labels(tmp_path: Path) -> None:
    labels = np.zeros(60, np.int64)
    labels[3] = -1
    with pytest.raises(DataError, match=r"d.npz \[val_labels\]: negative label -1"):
        load_dataset(_npz(tmp_path, val_labels=labels), progress=False)


def test_npz_non_integer_labels(tmp_path: Path) -> None:
    labels = np.full(60, 0.5)
    with pytest.raises(DataError, match="non-integer labels"):
        load_dataset(_npz(tmp_path, train_labels=labels), progress=False)
    # Whole numbers stored as floats are fine.
    ds = load_dataset(_npz(tmp_path, train_labels=np.arange(60) % 2 * 1.0), progress=False)
    assert ds.num_classes == 2


def test_npz_labels_that_look_like_ids(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="look like ids"):
        load_dataset(_npz(tmp_path, train_labels=np.arange(60) * 1000), progress=False)


def test_npz_label_out_of_range_for_known_class_names(tmp_path: Path) -> None:
    arrays = small_npz_arrays({"train": 60, "val": 60, "test": 20}, classes=3)
    path = save_npz(tmp_path / "pneumoniamnist_custom.npz", **arrays)
    with pytest.raises(
        DataError, match="label 2 is out of range for the 2 classes normal, pneumonia"
    ):
        load_dataset(path, progress=False)


def test_npz_label_count_mismatch_and_multilabel(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="59 labels for 60 images"):
        load_dataset(_npz(tmp_path, train_labels=np.zeros(59, np.int64)), progress=False)
    with pytest.raises(DataError, match="multi-label"):
        load_dataset(_npz(tmp_path, train_labels=np.zeros((60, 3), np.int64)), progress=False)


def test_npz_float_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset(_npz(tmp_path, val_images=np.zeros((60, 12, 12), np.float32)), progress=False)


def test_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match=r"cannot read the \.npz file"):
        load_dataset(tmp_path / "d.npz", progress=False)


# --- IDX ---------------------------------------------------------------------------------------


def test_idx_folder_missing_a_file(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"\0" * 12)
    with pytest.raises(DataError, match="without train-labels-idx1-ubyte"):
        load_dataset(tmp_path, progress=False)


def test_truncated_idx(tmp_path: Path) -> None:
    for stem in ("train", "t10k"):
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10, 4, 4))
        (tmp_path / f"{stem}-images-idx3-ubyte").write_bytes(header + b"\0" * 100)
        (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(range(10))
        )
    with pytest.raises(DataError, match="truncated or damaged"):
        load_dataset(tmp_path, progress=False)


# --- downloads -----------------------------------------------------------------------------------


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, str]:
    """Point the 64 px short name at a local file with a known MD5."""
    import dataclasses

    from lightlayers.data import registry

    arrays = small_npz_arrays({"train": 4708, "val": 524, "test": 624}, shape=(4, 4))
    src = save_npz(tmp_path / "official.npz", **arrays)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    entry = dataclasses.replace(
        registry.NAMED_SOURCES["pneumoniamnist-64"], md5=md5, url=src.as_uri()
    )
    monkeypatch.setitem(registry.NAMED_SOURCES, "pneumoniamnist-64", entry)
    return src, md5


def test_download_is_checked_and_cached(fake_download: tuple[Path, str]) -> None:
    ds = load_dataset("pneumoniamnist-64", progress=False)
    assert ds.classes == ("normal", "pneumonia") and len(ds.splits["val"]) == 524
    target = cache_root() / "downloads" / "pneumoniamnist_64.npz"
    assert target.read_bytes() == fake_download[0].read_bytes()


def test_placed_file_with_right_md5_is_used_offline(
    fake_download: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from lightlayers.data import registry

    target = cache_root() / "downloads" / "pneumoniamnist_64.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(fake_download[0].read_bytes())
    entry = registry.NAMED_SOURCES["pneumoniamnist-64"]
    monkeypatch.setitem(
        registry.NAMED_SOURCES,
        "pneumoniamnist-64",
        dataclasses.replace(entry, url="http://127.0.0.1:9/x"),
    )
    assert len(load_dataset("pneumoniamnist-64", progress=False).splits["test"]) == 624


def test_placed_file_with_wrong_md5_is_removed(fake_download: tuple[Path, str]) -> None:
    target = cache_root() / "downloads" / "pneumoniamnist_64.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(DataError) as e:
        load_dataset("pneumoniamnist-64", progress=False)
    msg = str(e.value)
    assert f"expected {fake_download[1]}" in msg and "was removed" in msg and str(target) in msg
    assert not target.exists()


def test_download_with_wrong_md5_is_discarded(
    fake_download: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from lightlayers.data import registry

    entry = registry.NAMED_SOURCES["pneumoniamnist-64"]
    monkeypatch.setitem(
        registry.NAMED_SOURCES, "pneumoniamnist-64", dataclasses.replace(entry, md5="0" * 32)
    )
    with pytest.raises(DataError, match=r"has MD5 .* expected 0{32}; it was discarded"):
        load_dataset("pneumoniamnist-64", progress=False)
    folder = cache_root() / "downloads"
    assert list(folder.iterdir()) == []  # neither the file nor a partial download


def test_offline_download_says_which_file_to_place_where(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from lightlayers.data import registry

    entry = registry.NAMED_SOURCES["pneumoniamnist-128"]
    monkeypatch.setitem(
        registry.NAMED_SOURCES,
        "pneumoniamnist-128",
        dataclasses.replace(entry, url="http://127.0.0.1:9/x"),
    )
    with pytest.raises(DataError) as e:
        load_dataset("pneumoniamnist-128", progress=False)
    msg = str(e.value)
    assert "could not download http://127.0.0.1:9/x" in msg
    assert "05b46931834c231683c68f40c47b2971" in msg  # the official MD5 of the 128 px file
    assert str(cache_root() / "downloads" / "pneumoniamnist_128.npz") in msg
    assert not (cache_root() / "downloads" / "pneumoniamnist_128.npz").exists()


def test_published_checksums_and_urls() -> None:
    from lightlayers.data.registry import NAMED_SOURCES

    md5 = {k: v.md5 for k, v in NAMED_SOURCES.items() if k.startswith("pneumoniamnist")}
    assert md5 == {
        "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
        "pneumoniamnist-64": "8f4eceb4ccffa70c672198ea285246c6",
        "pneumoniamnist-128": "05b46931834c231683c68f40c47b2971",
        "pneumoniamnist-224": "d6a3c71de1b945ea11211b03746c1fe1",
    }
    assert NAMED_SOURCES["pneumoniamnist-224"].url == (
        "https://zenodo.org/records/10519652/files/pneumoniamnist_224.npz?download=1"
    )


def test_unwritable_cache_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(DataError, match="Point LIGHTLAYERS_CACHE at a writable folder"):
        load_dataset("digits", progress=False)
