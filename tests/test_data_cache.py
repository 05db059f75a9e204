"""The decoded-image cache: hits, misses on any change, atomic writes, read-only arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes, pack, save_npz, small_npz_arrays, write_tree
from PIL import Image

from lightlayers.data import load_dataset
from lightlayers.data import preprocess as pre
from lightlayers.data.cache import CacheWarning, cache_root, load_entry


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the decoders, i.e. cache misses."""
    calls: list[int] = []
    for name in ("decode_files", "decode_arrays"):
        real = getattr(pre, name)

        def counting(*a: object, _real: object = real, **k: object) -> object:
            calls.append(1)
            return _real(*a, **k)  # type: ignore[operator]

        monkeypatch.setattr(f"lightlayers.data.dataset.{name}", counting)
    return calls


def _entries() -> list[Path]:
    return sorted((cache_root() / "datasets").iterdir())


def test_cache_lives_under_lightlayers_cache(tmp_path: Path) -> None:
    assert cache_root() == tmp_path / "cache"
    ds = load_dataset("digits", progress=False)
    assert Path(ds.identity["cache_path"]).parent == tmp_path / "cache" / "datasets"
    assert sorted(p.name for p in Path(ds.identity["cache_path"]).iterdir()) == [
        "digests.npy",
        "images.npy",
        "labels.npy",
        "meta.json",
        "splits.npy",
    ]


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIGHTLAYERS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "lightlayers"


def test_second_load_is_a_hit_with_equal_arrays(tmp_path: Path, decodes: list[int]) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    archive = pack(tmp_path / "t", tmp_path / "t.tgz")
    first = load_dataset(archive, size=12, progress=False)
    second = load_dataset(archive, size=12, progress=False)
    assert len(decodes) == 1 and len(_entries()) == 1
    for k in first.splits:
        np.testing.assert_array_equal(first.splits[k].images, second.splits[k].images)
        assert first.splits[k].ids == second.splits[k].ids


def test_options_that_change_pixels_are_misses(tmp_path: Path, decodes: list[int]) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20}, size=(24, 16))
    load_dataset(tmp_path / "t", size=12, progress=False)
    load_dataset(tmp_path / "t", size=12, resize="crop", progress=False)
    load_dataset(tmp_path / "t", size=8, progress=False)
    load_dataset(tmp_path / "t", size=12, in_chans=3, progress=False)
    assert len(decodes) == 4 and len(_entries()) == 4
    # Split options reuse the decoded images.
    load_dataset(tmp_path / "t", size=12, val_fraction=0.2, seed=5, resplit=0.3, progress=False)
    assert len(decodes) == 4


def test_auto_channels_find_the_explicit_entry(tmp_path: Path, decodes: list[int]) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    load_dataset(tmp_path / "t", in_chans=1, progress=False)
    assert load_dataset(tmp_path / "t", progress=False).in_chans == 1
    assert len(decodes) == 1
    write_tree(tmp_path / "rgb", {"a": 20, "b": 20}, mode="RGB")
    load_dataset(tmp_path / "rgb", in_chans=1, progress=False)  # converted: not the auto answer
    assert load_dataset(tmp_path / "rgb", progress=False).in_chans == 3
    assert len(decodes) == 3


def test_changed_folder_is_a_miss(tmp_path: Path, decodes: list[int]) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    load_dataset(tmp_path / "t", progress=False)
    (tmp_path / "t" / "README.md").write_text("not an image: no miss")
    load_dataset(tmp_path / "t", progress=False)
    assert len(decodes) == 1
    target = tmp_path / "t" / "a" / "img0.png"
    target.write_bytes(image_bytes(4242))
    os.utime(target, ns=(1, 1))
    ds = load_dataset(tmp_path / "t", progress=False)
    assert len(decodes) == 2
    new = np.asarray(Image.open(target))
    assert any((img == new).all() for s in ds.splits.values() for img in s.images[:, 0])


def test_changed_npz_is_a_miss(tmp_path: Path, decodes: list[int]) -> None:
    arrays = small_npz_arrays({"train": 60, "val": 60, "test": 10})
    path = save_npz(tmp_path / "d.npz", **arrays)
    load_dataset(path, progress=False)
    arrays["test_images"] = 255 - arrays["test_images"]
    save_npz(path, **arrays)
    ds = load_dataset(path, progress=False)
    assert len(decodes) == 2
    np.testing.assert_array_equal(ds.splits["test"].images[:, 0], arrays["test_images"])


def test_arrays_are_read_only(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    for _ in range(2):  # cold and warm
        ds = load_dataset(tmp_path / "t", progress=False)
        for split in ds.splits.values():
            assert not split.images.flags.writeable and not split.labels.flags.writeable
            with pytest.raises(ValueError):
                split.images[0, 0, 0, 0] = 1


def test_half_written_entries_are_never_read(tmp_path: Path, decodes: list[int]) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    ds = load_dataset(tmp_path / "t", progress=False)
    final = Path(ds.identity["cache_path"])
    # A crashed writer leaves only its temporary folder; a reader looks at the final name only.
    (final.parent / f".{final.name}.123-abc.tmp").mkdir()
    (final / "meta.json").unlink()  # and an unusable final entry is rebuilt, not trusted
    assert load_entry(final) is None
    with pytest.warns(CacheWarning, match=f"replaced the unusable entry {final}.*meta.json"):
        again = load_dataset(tmp_path / "t", progress=False)
    assert len(decodes) == 2 and load_entry(final) is not None
    np.testing.assert_array_equal(again.splits["test"].images, ds.splits["test"].images)


def test_failed_decode_writes_nothing(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 20, "b": 20})
    (tmp_path / "t" / "a" / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError):
        load_dataset(tmp_path / "t", progress=False)
    assert not (cache_root() / "datasets").exists() or not list(
        (cache_root() / "datasets").iterdir()
    )
