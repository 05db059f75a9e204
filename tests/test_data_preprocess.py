"""Decoding and resizing: stretch vs crop, antialiasing, channels, parallel = serial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes, save_npz
from PIL import Image

from lightlayers.data import DataError, load_dataset
from lightlayers.data import preprocess as pre
from lightlayers.data.preprocess import decode_image


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))


def _png(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _banded() -> np.ndarray:
    """60 wide x 20 high: black, a white band 30 wide in the middle, black."""
    a = np.zeros((20, 60), np.uint8)
    a[:, 15:45] = 255
    return a


def test_stretch_keeps_the_whole_image_crop_keeps_the_center() -> None:
    stretched, _, _ = decode_image(_png(_banded()), 12, None, "stretch")  # type: ignore[misc]
    cropped, _, _ = decode_image(_png(_banded()), 12, None, "crop")  # type: ignore[misc]
    assert stretched.shape == cropped.shape == (12, 12)
    assert stretched[:, 0].max() == 0 and stretched[:, 6].min() == 255  # all three bands
    assert cropped.min() == 255  # the center 20x20 square lies inside the white band


def test_center_fractions_keep_the_middle_of_each_axis() -> None:
    # 0.4 of the width: the middle 24 columns, inside the white band (with room for the
    # resampling filter's reach); the full height.
    band, _, _ = decode_image(_png(_banded()), 12, None, "center:0.4x1")  # type: ignore[misc]
    assert band.shape == (12, 12) and band.min() == 255
    # 0.8 of the width reaches 9 px into each black side: black edges, white middle.
    wider, _, _ = decode_image(_png(_banded()), 12, None, "center:0.8x1")  # type: ignore[misc]
    assert wider[:, 0].max() < 128 and wider[:, 6].min() == 255
    whole, _, _ = decode_image(_png(_banded()), 12, None, "center:1x1")  # type: ignore[misc]
    stretched, _, _ = decode_image(_png(_banded()), 12, None, "stretch")  # type: ignore[misc]
    np.testing.assert_array_equal(whole, stretched)


@pytest.mark.parametrize("bad", ["center:0x1", "center:1.5x1", "center:0.7", "middle", ""])
def test_bad_resize_is_one_clear_error(bad: str) -> None:
    with pytest.raises(DataError, match=f"resize: .*got {bad!r}"):
        load_dataset("digits", size=8, resize=bad, progress=False)


def test_a_center_crop_applies_to_arrays_already_at_the_size(tmp_path: Path) -> None:
    # Square 20x20 arrays asked at 20 px are kept as they are, unless part is cut away.
    images = np.zeros((18, 20, 20), np.uint8)
    images[:, :, 3:17] = 255  # the middle 10 columns and 2 more on each side
    images[:, :, 0] = np.arange(18)[:, None]  # no two images alike
    labels = np.arange(18) % 2
    npz = save_npz(tmp_path / "a.npz", **{f"{s}_{k}": v[i::3] for i, s in
                                          enumerate(("train", "val", "test"))
                                          for k, v in (("images", images), ("labels", labels))})
    same = load_dataset(npz, size=20, progress=False)
    cut = load_dataset(npz, size=20, resize="center:0.5x1", progress=False)
    assert _all_images(same) == sorted(bytes(im[None]) for im in images)
    assert all(im.min() == 255 for s in cut.splits.values() for im in s.images)


def test_downscaling_is_antialiased() -> None:
    # A one-pixel checkerboard averages to grey; point sampling would give 0 or 255.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    small, _, _ = decode_image(_png(board), 8, None, "stretch")  # type: ignore[misc]
    assert np.abs(small.astype(int) - 128).max() <= 2


def test_rgb_to_grey_uses_luma_and_grey_to_rgb_repeats() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    grey, is_grey, _ = decode_image(_png(rgb), None, 1, "stretch")  # type: ignore[misc]
    assert not is_grey and grey.shape == (4, 4)
    assert grey[0, 0] == (200 * 299 + 500) // 1000  # ITU-R 601-2, as PIL
    _, is_grey, _ = decode_image(_png(np.full((4, 4), 7, np.uint8)), None, 3, "stretch")  # type: ignore[misc]
    assert is_grey  # grey stays 2-D here; the 3 channels are made when stacking


def test_unreadable_image_returns_the_reason() -> None:
    msg = decode_image(b"not an image at all", 8, None, "stretch")
    assert isinstance(msg, str) and "UnidentifiedImageError" in msg


def test_digest_ignores_the_output_options() -> None:
    data = image_bytes(3, size=(30, 30))
    d = {
        decode_image(data, s, c, r)[2]
        for s in (None, 8)
        for c in (None, 1, 3)
        for r in ("stretch", "crop")
    }  # type: ignore[index]
    assert len(d) == 1


def test_array_and_file_sources_resize_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 30, 20), dtype=np.uint8)
    labels = np.arange(40) % 2
    npz = save_npz(tmp_path / "a.npz", train_images=images, train_labels=labels)
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "t" / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "t" / str(y) / f"{i:02d}.png")
    for resize in ("stretch", "crop", "center:0.7x0.9"):
        a = load_dataset(npz, size=10, resize=resize, progress=False)
        f = load_dataset(tmp_path / "t", size=10, resize=resize, progress=False)
        assert a.splits["train"].images.shape[1:] == (1, 10, 10)
        assert _all_images(a) == _all_images(f)


def _all_images(ds: object) -> list[bytes]:
    return sorted(bytes(im) for s in ds.splits.values() for im in s.images)  # type: ignore[attr-defined]


def test_rgb_arrays_to_one_channel_match_pil(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    npz = save_npz(tmp_path / "c.npz", train_images=images, train_labels=np.arange(30) % 2)
    ds = load_dataset(npz, in_chans=1, progress=False)
    expected = [np.asarray(Image.fromarray(im).convert("L"))[None] for im in images]
    assert _all_images(ds) == sorted(bytes(np.ascontiguousarray(e)) for e in expected)


def test_parallel_decoding_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in ("a", "b"):
        (tmp_path / "t" / cls).mkdir(parents=True)
        for i in range(300):
            (tmp_path / "t" / cls / f"{i}.jpg").write_bytes(
                image_bytes(i + 1000 * (cls == "b"), size=(24, 24), fmt="JPEG")
            )
    parallel = load_dataset(tmp_path / "t", size=16, progress=False)
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(pre, "_MIN_PARALLEL", 10**9)  # one worker: serial, in process
    serial = load_dataset(tmp_path / "t", size=16, progress=False)
    for k in parallel.splits:
        np.testing.assert_array_equal(parallel.splits[k].images, serial.splits[k].images)
