"""DICOM images (``.dcm``, ``.dicom``, or any file with the ``DICM`` marker) to 8-bit grey or RGB.

Grey images (MONOCHROME1, MONOCHROME2; 8 to 16 bits stored, signed or not) go through the
standard's pipeline (DICOM PS3.3 C.11):

1. the modality transform: Rescale Slope and Intercept (CT's Hounsfield units), or a Modality
   LUT;
2. the VOI transform to 0..255: the first VOI LUT of the file when it has one, else its first
   window (Window Center and Width, with its VOI LUT Function: LINEAR, LINEAR_EXACT or
   SIGMOID); a file with neither is scaled from each image's own minimum (0) to its own
   maximum (255), as 32-bit images of other formats are, except 8-bit data stored without a
   rescale, which is used as it is;
3. MONOCHROME1 (0 is white) is inverted, so every image is dark-is-low.

RGB images of 8 bits are used as stored. Multi-frame files (a series in one file), more than
16 bits, float pixels and other photometric interpretations are refused with the reason.
Which mapping each image had is recorded: :func:`mapping_notes` gives the lines the dataset's
notes keep (``lightlayers data summary`` shows them).

Needs pydicom (``pip install 'lightlayers[dicom]'``); compressed transfer syntaxes need the
decoders pydicom names in its message (e.g. pylibjpeg).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["DICOM_EXTENSIONS", "INSTALL_HINT", "decode", "is_dicom", "mapping",
           "mapping_notes", "missing_pydicom"]

DICOM_EXTENSIONS = (".dcm", ".dicom")
INSTALL_HINT = "pip install 'lightlayers[dicom]'"
# Part 10 files: a 128-byte preamble, then these four bytes.
_MAGIC = b"DICM"
_MAGIC_AT = 128
# Extensions Pillow reads: such a file is not sniffed for the DICOM marker (one open saved per
# image of an ordinary dataset).
_PILLOW_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class Refused(Exception):
    """A DICOM file this decoder will not map to 8 bits; the message is the reason."""


def is_dicom(payload: bytes | str) -> bool:
    """Whether an image payload (its bytes, or its path) is a DICOM file: by its extension,
    else by the ``DICM`` marker after the preamble."""
    if isinstance(payload, bytes):
        return payload[_MAGIC_AT:_MAGIC_AT + 4] == _MAGIC
    ext = os.path.splitext(payload)[1].lower()
    if ext in DICOM_EXTENSIONS:
        return True
    if ext in _PILLOW_EXTENSIONS:
        return False
    try:
        with open(payload, "rb") as f:
            return f.read(_MAGIC_AT + 4)[_MAGIC_AT:] == _MAGIC
    except OSError:
        return False  # Pillow reports it as unreadable


def missing_pydicom() -> str | None:
    """None when pydicom can be imported, else what to install."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return f"reading DICOM files needs pydicom: {INSTALL_HINT}"
    return None


def _read(payload: bytes | str, header_only: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(payload) if isinstance(payload, bytes) else payload,
                               force=True, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise Refused(f"not a readable DICOM file ({type(e).__name__}: {e})") from e


def _first(value: Any) -> float:
    """A multi-valued element's first value (a file may carry several windows)."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _has_window(ds: Any) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _has_voi_lut(ds: Any) -> bool:
    seq = ds.get("VOILUTSequence")
    return seq is not None and len(seq) > 0


def _rescale(ds: Any) -> tuple[float, float] | None:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and intercept is None:
        return None
    s, i = float(slope if slope is not None else 1), float(intercept or 0)
    return None if (s, i) == (1.0, 0.0) else (s, i)


def _function(ds: Any) -> str:
    return str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()


def mapping(ds: Any) -> str:
    """How :func:`decode` maps this file's pixels to 8 bits, from its header alone."""
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    if pi == "RGB":
        return f"{bits}-bit RGB as stored"
    parts = [f"{bits}-bit {pi}"]
    if "ModalityLUTSequence" in ds:
        parts.append("modality LUT")
    elif (r := _rescale(ds)) is not None:
        parts.append(f"rescale slope {r[0]:g} intercept {r[1]:g}")
    if _has_voi_lut(ds):
        parts.append("VOI LUT (the file's first)")
    elif _has_window(ds):
        parts.append(f"window center {_first(ds.WindowCenter):g} width "
                     f"{_first(ds.WindowWidth):g} ({_function(ds)})")
    elif bits <= 8 and not int(ds.get("PixelRepresentation") or 0) \
            and _rescale(ds) is None and "ModalityLUTSequence" not in ds:
        parts.append("values as stored")
    else:
        parts.append("each image's own min..max (no window in the file)")
    if pi == "MONOCHROME1":
        parts.append("inverted (MONOCHROME1)")
    return ", ".join(parts)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 to 0..255."""
    if function == "LINEAR":
        if width < 1:
            raise Refused(f"window width {width:g} is below 1 (LINEAR)")
        if width == 1:
            return np.where(x <= center - 0.5, 0.0, 255.0)
        return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    if width <= 0:
        raise Refused(f"window width {width:g} is not positive ({function})")
    if function == "LINEAR_EXACT":
        return ((x - center) / width + 0.5) * 255.0
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise Refused(f"VOI LUT function {function} is not LINEAR, LINEAR_EXACT or SIGMOID")


def _grey(arr: np.ndarray, ds: Any) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_modality_lut,
            apply_voi,
        )

    if arr.dtype == np.uint8 and not _has_voi_lut(ds) and not _has_window(ds) \
            and _rescale(ds) is None and "ModalityLUTSequence" not in ds:
        return arr
    x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if _has_voi_lut(ds):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # A LUT is indexed by whole numbers: the rescaled values, rounded.
        y = np.asarray(apply_voi(np.rint(x).astype(np.int64), ds, index=0), np.float64)
        y *= 255.0 / (2**bits - 1)
    elif _has_window(ds):
        y = _window(x, _first(ds.WindowCenter), _first(ds.WindowWidth), _function(ds))
    else:
        lo, hi = float(x.min()), float(x.max())
        if hi == lo:
            return np.zeros(x.shape, np.uint8)
        y = (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def decode(payload: bytes | str, max_pixels: int) -> Image.Image:
    """One DICOM file as a PIL image of mode L or RGB (see the module docstring); raises
    :class:`Refused` with the reason. Width x height is checked against ``max_pixels`` before
    any pixel is decoded."""
    if (missing := missing_pydicom()) is not None:
        raise Refused(missing)
    try:
        with warnings.catch_warnings():
            # pydicom warns about each oddity it works around; the reason of a refusal, or
            # the mapping in the notes, is what the dataset records.
            warnings.simplefilter("ignore")
            return _decode(payload, max_pixels)
    except Refused:
        raise
    except Exception as e:  # a damaged header can fail anywhere (bad values, short fields)
        raise Refused(f"not a readable DICOM file ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _decode(payload: bytes | str, max_pixels: int) -> Image.Image:
    ds = _read(payload, header_only=False)
    if "PixelData" not in ds:
        kind = ("float pixels" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
                else "no pixel data")
        raise Refused(f"a DICOM file with {kind}; 8- to 16-bit integer images are supported")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise Refused(f"a multi-frame DICOM file ({frames} frames); save each frame as a file "
                      "of its own")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * cols > max_pixels:
        raise Refused(f"{cols} x {rows} pixels exceeds the limit of {max_pixels} "
                      "(LIGHTLAYERS_MAX_IMAGE_PIXELS)")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    if not 1 <= bits <= 16:
        raise Refused(f"{bits}-bit DICOM pixels; 8 to 16 bits are supported")
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    spp = int(ds.get("SamplesPerPixel") or 1)
    if not ((pi in ("MONOCHROME1", "MONOCHROME2") and spp == 1) or (pi == "RGB" and spp == 3)):
        raise Refused(f"DICOM photometric interpretation {pi or 'missing'} with {spp} sample(s) "
                      "per pixel; MONOCHROME1, MONOCHROME2 and RGB are supported")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types (missing decoder, short data, ...)
        raise Refused(f"cannot decode the DICOM pixel data ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if pi == "RGB":
        if bits > 8:
            raise Refused(f"{bits}-bit RGB DICOM pixels; RGB images must be 8-bit")
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")
    values = _grey(np.asarray(arr), ds)
    if pi == "MONOCHROME1":
        values = 255 - values
    return Image.fromarray(np.ascontiguousarray(values), "L")


def mapping_notes(files: Iterable[tuple[str, bytes | str]], shown: int = 5) -> list[str]:
    """Notes saying how the DICOM files among ``files`` (id, payload) were mapped to 8 bits,
    one line per mapping: ``DICOM to 8 bits: 12 image(s) by 12-bit MONOCHROME2, window ...``."""
    by_mapping: dict[str, list[str]] = {}
    for item_id, payload in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                how = mapping(_read(payload, header_only=True))
        except Exception:
            continue  # decoded a moment ago; a file changed since is caught by the cache key
        by_mapping.setdefault(how, []).append(item_id)
    lines = [f"DICOM to 8 bits: {len(ids)} image(s) by {how} (e.g. {ids[0]})"
             for how, ids in sorted(by_mapping.items(), key=lambda kv: -len(kv[1]))[:shown]]
    if len(by_mapping) > shown:
        lines.append(f"DICOM to 8 bits: {len(by_mapping) - shown} more mapping(s)")
    return lines
