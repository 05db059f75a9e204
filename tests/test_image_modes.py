"""Every Pillow mode maps to 8 bits as lightlayers.data.preprocess._as_l_or_rgb documents it:
for each mode a non-constant image stays non-constant, and its values are the stated mapping,
both for the image in memory and after a round trip through a PNG or TIFF file."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightlayers.data.preprocess import _as_l_or_rgb, decode_image

H, W = 8, 12
# A gradient and two other channels, so no two channels are equal (not grey).
G = (np.arange(H * W).reshape(H, W) * 2 + 10).astype(np.uint8)
RGB = np.stack([G, 255 - G, (G // 3 + 40).astype(np.uint8)], -1)
ALPHA = np.linspace(0, 255, H * W).reshape(H, W).round().astype(np.uint8)


def _over_white(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int64)[..., None] if v.ndim == 3 else a.astype(np.int64)
    return ((v.astype(np.int64) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _palette_image() -> Image.Image:
    return Image.fromarray(RGB).quantize(64)


def _stretched(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return np.rint((a - a.min()) * 255 / (a.max() - a.min())).astype(np.uint8)


def _mode_1() -> tuple[Image.Image, np.ndarray, int]:
    bits = G > 100
    return Image.fromarray(bits), np.where(bits, 255, 0).astype(np.uint8), 0


def _mode_l() -> tuple[Image.Image, np.ndarray, int]:
    return Image.fromarray(G), G, 0


def _mode_p() -> tuple[Image.Image, np.ndarray, int]:
    im = _palette_image()
    return im, np.asarray(im.convert("RGB")), 0


def _mode_la() -> tuple[Image.Image, np.ndarray, int]:
    im = Image.merge("LA", [Image.fromarray(G), Image.fromarray(ALPHA)])
    return im, _over_white(G, ALPHA), 0


def _mode_la_ink() -> tuple[Image.Image, np.ndarray, int]:
    # Black ink whose shape is only in the alpha band: visible over white.
    im = Image.merge("LA", [Image.new("L", (W, H), 0), Image.fromarray(ALPHA)])
    return im, (255 - ALPHA).astype(np.uint8), 0


def _mode_pa() -> tuple[Image.Image, np.ndarray, int]:
    p = _palette_image()
    im = p.convert("PA")
    im.putalpha(Image.fromarray(ALPHA))
    return im, _over_white(np.asarray(p.convert("RGB")), ALPHA), 0


def _mode_rgb() -> tuple[Image.Image, np.ndarray, int]:
    return Image.fromarray(RGB), RGB, 0


def _mode_rgba() -> tuple[Image.Image, np.ndarray, int]:
    im = Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1))
    return im, _over_white(RGB, ALPHA), 0


def _mode_rgbx() -> tuple[Image.Image, np.ndarray, int]:
    return Image.fromarray(RGB).convert("RGBX"), RGB, 0


def _mode_cmyk() -> tuple[Image.Image, np.ndarray, int]:
    cmyk = np.stack([G // 2, 255 - G, G // 4, (G // 5).astype(np.uint8)], -1).astype(np.uint8)
    im = Image.frombytes("CMYK", (W, H), cmyk.tobytes())
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    # Pillow's subtractive formula: (255 - ink) * (255 - black) / 255.
    want = np.stack([np.rint((255 - x) * (255 - k) / 255) for x in (c, m, y)], -1)
    return im, want.astype(np.uint8), 1


def _mode_ycbcr() -> tuple[Image.Image, np.ndarray, int]:
    ycc = np.stack([G, (G // 2 + 60).astype(np.uint8), (200 - G // 2).astype(np.uint8)], -1)
    im = Image.frombytes("YCbCr", (W, H), ycc.astype(np.uint8).tobytes())
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    # ITU-R 601 (JPEG's YCbCr), to within Pillow's fixed-point rounding.
    want = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)], -1)
    return im, np.clip(np.rint(want), 0, 255).astype(np.uint8), 2


def _mode_lab() -> tuple[Image.Image, np.ndarray, int]:
    # Colorimetric: CIE L*a*b* (D50, as ICC) to sRGB, as LittleCMS computes it.
    from PIL import ImageCms

    lab = np.stack([G, (G // 2 + 100).astype(np.uint8), (180 - G // 3).astype(np.uint8)], -1)
    im = Image.frombytes("LAB", (W, H), lab.astype(np.uint8).tobytes())
    to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"),
                                      ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return im, np.asarray(ImageCms.applyTransform(im, to_srgb)), 1


def _mode_hsv() -> tuple[Image.Image, np.ndarray, int]:
    import colorsys

    hsv = np.stack([G, (255 - G // 2).astype(np.uint8), (G // 2 + 120).astype(np.uint8)], -1)
    im = Image.frombytes("HSV", (W, H), hsv.astype(np.uint8).tobytes())
    want = np.array([[colorsys.hsv_to_rgb(*(px / 255)) for px in row] for row in hsv])
    return im, np.rint(want * 255).astype(np.uint8), 1


def _mode_i() -> tuple[Image.Image, np.ndarray, int]:
    values = G.astype(np.int32) * 40 - 3000  # e.g. CT numbers: negative and above 255
    return Image.fromarray(values), _stretched(values), 0


def _sixteen(mode: str) -> Callable[[], tuple[Image.Image, np.ndarray, int]]:
    def make() -> tuple[Image.Image, np.ndarray, int]:
        values = (G.astype(np.uint32) * 250).astype(np.uint16)
        dtype = ">u2" if mode == "I;16B" else "<u2"
        im = Image.frombytes(mode, (W, H), values.astype(dtype).tobytes())
        return im, ((values.astype(np.int64) + 128) // 257).astype(np.uint8), 0

    return make


def _mode_f() -> tuple[Image.Image, np.ndarray, int]:
    values = (G.astype(np.float32) - 100) / 300  # floats in about [-0.3, 0.5]
    return Image.fromarray(values), _stretched(values), 0


MODES: dict[str, Callable[[], tuple[Image.Image, np.ndarray, int]]] = {
    "1": _mode_1, "L": _mode_l, "P": _mode_p, "LA": _mode_la, "LA-ink": _mode_la_ink,
    "PA": _mode_pa, "RGB": _mode_rgb, "RGBA": _mode_rgba, "RGBX": _mode_rgbx,
    "CMYK": _mode_cmyk, "YCbCr": _mode_ycbcr, "LAB": _mode_lab, "HSV": _mode_hsv,
    "I": _mode_i, "I;16": _sixteen("I;16"), "I;16B": _sixteen("I;16B"),
    "I;16L": _sixteen("I;16L"), "F": _mode_f,
}


def _check(got: np.ndarray, want: np.ndarray, tol: int) -> None:
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert got.min() < got.max(), "a non-constant image decoded to a constant one"
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64)).max()
    assert diff <= tol, (diff, got[0, :4].tolist(), want[0, :4].tolist())


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_maps_as_documented(name: str) -> None:
    im, want, tol = MODES[name]()
    assert im.mode == name.removesuffix("-ink")
    base, gray = _as_l_or_rgb(im)
    assert gray == (want.ndim == 2)
    assert base.mode == ("L" if gray else "RGB")
    _check(np.asarray(base), want, tol)


def _saved(im: Image.Image) -> bytes | None:
    for fmt in ("PNG", "TIFF"):
        buf = io.BytesIO()
        try:
            im.save(buf, format=fmt)
        except (OSError, KeyError, ValueError):
            continue
        return buf.getvalue()
    return None


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_decodes_from_a_file(name: str, tmp_path: Path) -> None:
    im, want, tol = MODES[name]()
    blob = _saved(im)
    if blob is None:
        assert name == "HSV"  # the one mode neither PNG nor TIFF can store
        return
    path = tmp_path / "image"
    path.write_bytes(blob)
    for payload in (blob, str(path)):
        result = decode_image(payload, None, None, "stretch")
        assert not isinstance(result, str), result
        _check(result[0], want, tol)


def test_a_constant_wide_image_is_black_and_non_finite_floats_are_refused() -> None:
    flat, _ = _as_l_or_rgb(Image.fromarray(np.full((4, 4), 1234, np.int32)))
    assert np.asarray(flat).max() == 0
    values = np.ones((4, 4), np.float32)
    values[1, 2] = np.nan
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")
    reason = decode_image(buf.getvalue(), None, None, "stretch")
    assert isinstance(reason, str) and "mode F image with NaN or infinite values" in reason


def test_a_mode_without_a_mapping_is_refused_with_its_name() -> None:
    from lightlayers.data import preprocess

    im = Image.new("RGB", (4, 4))
    im_mode = type("Odd", (), {"mode": "BGR;24"})()
    with pytest.raises(preprocess._Refused, match="image mode BGR;24 is not supported"):
        _as_l_or_rgb(im_mode)  # type: ignore[arg-type]
    assert _as_l_or_rgb(im)[1] is True


def test_a_png_opened_as_mode_i_is_16_bit_not_stretched() -> None:
    values = np.array([[0, 1000, 30000]], np.int32)
    im = Image.fromarray(values)
    im.format = "PNG"  # how an older Pillow presents a 16-bit grey PNG
    got = np.asarray(_as_l_or_rgb(im)[0])
    assert got.tolist() == [[0, 4, 117]]  # (v + 128) // 257; stretched, 30000 would be 255
