"""The .npy header of an image file written row by row (data.preprocess writes it, data.cache
reads it back with numpy): a fixed-size header, so rows can be written before the count is
known and the header last."""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["NPY_HEADER_BYTES", "write_npy_header"]

# Room for images.npy's header, written last once the image count is known; a page, so the
# pixels that follow are page-aligned for the memory map.
NPY_HEADER_BYTES = 4096


def write_npy_header(f: Any, shape: tuple[int, ...]) -> None:
    """Write at the start of the open file ``f`` the .npy v1 header of a C-order uint8 array of
    ``shape``, padded to :data:`NPY_HEADER_BYTES` (the data must start there)."""
    magic = b"\x93NUMPY\x01\x00"
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    room = NPY_HEADER_BYTES - len(magic) - 2
    f.seek(0)
    f.write(magic + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode("latin1"))
