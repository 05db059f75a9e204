"""Decode once: images -> uint8 (N, C, H, W) at one size and channel count, plus a content digest
per image (for duplicate checks) computed on the decoded pixels before resizing.

Size: an image's pixel count is read from its header before any pixel is decoded, and an
image over :data:`MAX_IMAGE_PIXELS` (40 megapixels; ``LIGHTLAYERS_MAX_IMAGE_PIXELS`` overrides
it) is an undecodable image, in training and in ``lightlayers predict`` alike: a 0.5 MB PNG can
claim 13000 x 13000 pixels and take gigabytes to decode. Only regular files are opened; a named
pipe, socket or device is refused unopened (reading a FIFO would wait forever).

Pixel values: every Pillow mode maps to 8 bits (see :func:`_as_l_or_rgb`); DICOM files by
the standard's rescale and window (:mod:`lightlayers.data.dicom`).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import itertools
import multiprocessing
import os
import re
import signal
import stat
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from lightlayers.data.errors import DataError
from lightlayers.data.sources.base import SPLITS, ArraySet, FileSet

__all__ = [
    "ENV_MAX_IMAGE_PIXELS",
    "MAX_IMAGE_PIXELS",
    "RESAMPLE",
    "Decoded",
    "PreprocessOptions",
    "decode_arrays",
    "decode_files",
    "max_image_pixels",
    "special_file_kind",
]

# PIL's BILINEAR widens its filter by the downscale factor, so it is antialiased (like
# torchvision's antialias=True); part of every cache key, so changing it re-decodes.
RESAMPLE = "bilinear"
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
# Below this many images a pool costs more than it saves.
_MIN_PARALLEL = 256
# Jobs handed to the pool at a time (see parallel_map).
_JOB_BLOCK = 1024
# Largest image (width x height) decoded, in training and prediction: far above any medical or
# photographic dataset (a 6000 x 6000 scan is 36 MP), and at 4 bytes a pixel still < 200 MB.
MAX_IMAGE_PIXELS = 40_000_000
ENV_MAX_IMAGE_PIXELS = "LIGHTLAYERS_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit in force: :data:`MAX_IMAGE_PIXELS`, or the environment's override."""
    text = os.environ.get(ENV_MAX_IMAGE_PIXELS, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    if re.fullmatch(r"[0-9][0-9_]*", text) is None or int(text) < 1:
        raise DataError(
            f"{ENV_MAX_IMAGE_PIXELS}={text!r} is not a positive whole number of pixels; give "
            f"width x height, e.g. {ENV_MAX_IMAGE_PIXELS}=100000000 for 100 megapixels."
        )
    return int(text)


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def special_file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a named pipe (FIFO)", ...), from its ``st_mode``; None for
    a regular file. Reading a FIFO waits for a writer forever, and a device can be endless."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _SPECIAL_KINDS if test(mode)), "not a regular file")


@dataclass(frozen=True)
class PreprocessOptions:
    size: int | None = None  # square output side; None keeps the native size
    in_chans: int | None = None  # 1, 3, or None: 1 when every image is grey, else 3
    # "stretch" (the study), "crop" (center square, as MedMNIST) or "center:WxH" fractions
    resize: str = "stretch"

    def with_chans(self, in_chans: int) -> PreprocessOptions:
        return replace(self, in_chans=in_chans)

    def key_fields(self) -> dict[str, Any]:
        return {**asdict(self), "resample": RESAMPLE}


@dataclass
class Decoded:
    """All images of a source, decoded; the unit the cache stores."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    split_codes: np.ndarray  # int8 (N,): index into SPLITS, -1 = source without splits
    digests: np.ndarray  # uint64 (N,): hash of the decoded pixels before resizing
    classes: tuple[str, ...]
    ids: list[str] | None  # relative file paths; None for array sources
    source_is_gray: bool  # every source image had equal channels (decided before conversion)
    # (file id, reason) of each unreadable file left out; the cache keeps them as JSON lists.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Channels the images are presented with: None or C as stored; 3 with C == 1 for a grey
    # source decoded for a 3-channel model (stored once, repeated where batches are built).
    chans: int | None = None


def _digest(data: bytes, shape: tuple[int, ...]) -> int:
    h = hashlib.blake2b(data, digest_size=8)
    h.update(repr(shape).encode())
    return int.from_bytes(h.digest(), "little")


class _Refused(Exception):
    """An image this decoder will not map to 8 bits; the message is the reason."""


_GREY_16 = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes Pillow converts to RGB faithfully: RGBX drops its padding byte, CMYK uses Pillow's
# subtractive formula, YCbCr is ITU-R 601 (JPEG's), HSV is exact and LAB goes to sRGB through
# LittleCMS (D50, as ICC profiles).
_TO_RGB = frozenset({"RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P"})
_WITH_ALPHA = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _over_white(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 ``values`` (H, W) or (H, W, C) composited over white, as image viewers show them:
    round((v * a + 255 * (255 - a)) / 255). Over black, dark ink drawn on a transparent
    background (scans, signatures, icons) would vanish into a constant image."""
    a = alpha.astype(np.uint32)
    if values.ndim == 3:
        a = a[..., None]
    return ((values.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _stretch_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """Mode I / F values scaled linearly from the image's own [min, max] to [0, 255]."""
    if not np.isfinite(a).all():
        raise _Refused(f"a mode {mode} image with NaN or infinite values; store finite values")
    lo, hi = float(a.min()), float(a.max())
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _as_l_or_rgb(im: Image.Image) -> tuple[Image.Image, bool]:
    """The image as mode L (when grey) or RGB, and whether it is grey.

    Every Pillow mode maps to 8 bits per channel:

    - ``1``: 0 and 255. ``L``, ``RGB``: as stored.
    - ``I;16``, ``I;16B``, ``I;16L`` (16-bit grey, common in medical PNG/TIFF):
      ``(v + 128) // 257``, i.e. v / 257 rounded, so 0..65535 spans 0..255 exactly (a
      16-bit PNG that an older Pillow opens as mode ``I`` too).
    - ``I`` (32-bit integer) and ``F`` (32-bit float): no fixed range, so each image is scaled
      linearly from its own minimum (0) to its own maximum (255); a constant image is all 0,
      and an ``F`` image holding NaN or infinity is refused.
    - ``P`` (palette), ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to RGB by
      Pillow (a palette through its colours, LAB and HSV colorimetrically).
    - Alpha (``LA``, ``PA``, ``RGBA``, a ``P`` image with a transparent colour, and the
      premultiplied ``La``/``RGBa``): composited over **white**,
      (v * alpha + 255 * (255 - alpha)) / 255 rounded, so a fully transparent pixel is 255.

    Then an RGB image whose three channels are equal everywhere is grey (mode L). Any other
    mode is refused (:class:`_Refused`, the reason naming the mode).
    """
    mode = im.mode
    # PNG stores at most 16 bits of grey; older Pillow versions open such a file as mode I.
    if mode in _GREY_16 or (mode == "I" and im.format == "PNG"):
        a = np.asarray(im).astype(np.int64)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8)), True
    if mode in ("I", "F"):
        return Image.fromarray(_stretch_to_8bit(np.asarray(im, dtype=np.float64), mode)), True
    if mode == "L":
        return im, True
    if mode == "1":
        return im.convert("L"), True
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA"))
        return Image.fromarray(_over_white(la[..., 0], la[..., 1])), True
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in im.info):
        # PA keeps its own alpha band: Pillow's PA -> RGBA conversion would make it opaque.
        alpha = np.asarray(im.getchannel("A")) if mode == "PA" else None
        rgba = np.asarray(im.convert("RGB" if mode == "PA" else "RGBA"))
        if alpha is None:
            rgba, alpha = rgba[..., :3], rgba[..., 3]
        rgb = Image.fromarray(_over_white(rgba, alpha))
    elif mode in _TO_RGB:
        rgb = im if mode == "RGB" else im.convert("RGB")
    else:
        raise _Refused(f"image mode {mode} is not supported; save it as 8- or 16-bit grey or RGB")
    r, g, b = rgb.split()
    # getbbox() of the difference is None exactly when two channels are equal everywhere.
    if (
        ImageChops.difference(r, g).getbbox() is None
        and ImageChops.difference(r, b).getbbox() is None
    ):
        return r, True
    return rgb, False


RESIZE_HELP = ("stretch (ignore the aspect ratio), crop (the center square) or center:WxH "
               "(the central fractions W of the width and H of the height, then stretched; "
               "e.g. center:0.7x1)")


def center_fractions(resize: str) -> tuple[float, float] | None:
    """(W, H) of a ``center:WxH`` mode, None for stretch and crop; ValueError (what it must
    be) when invalid."""
    if resize in ("stretch", "crop"):
        return None
    kind, _, spec = resize.partition(":")
    try:
        if kind != "center":
            raise ValueError
        fw, fh = (float(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"must be {RESIZE_HELP}") from None
    if not (0 < fw <= 1 and 0 < fh <= 1):
        raise ValueError("each fraction of center:WxH must be in (0, 1]")
    return fw, fh


def _resize(im: Image.Image, size: int, resize: str) -> Image.Image:
    w, h = im.size
    box = None
    if resize == "crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    elif (fractions := center_fractions(resize)) is not None:
        cw, ch = w * fractions[0], h * fractions[1]
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return im.resize((size, size), _RESAMPLE[RESAMPLE], box=box)


# A Pillow message about an in-memory file names the buffer object, not the file: the caller
# prefixes the member's name instead.
_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_PILLOW_LIMIT = threading.Lock()


def _open_unchecked(source: io.BytesIO | str) -> Image.Image:
    """Image.open without Pillow's own decompression-bomb check, which raises (or warns) in
    open() before the size can be read; :func:`decode_image` applies its own limit instead."""
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_large(im: Image.Image, limit: int) -> str | None:
    w, h = im.size
    if w * h <= limit:
        return None
    return f"{w} x {h} pixels exceeds the limit of {limit} ({ENV_MAX_IMAGE_PIXELS})"


def decode_image(
    payload: bytes | str, size: int | None, in_chans: int | None, resize: str
) -> tuple[np.ndarray, bool, int] | str:
    """One image -> (H, W) or (H, W, 3) uint8, is-grey, digest; or the reason it cannot be
    decoded. A path is opened only when it is a regular file, and the pixels only when the
    header's width x height is within :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if isinstance(payload, str):
        try:
            kind = special_file_kind(os.stat(payload).st_mode)
        except OSError:
            kind = None  # missing or a broken link: Image.open says which
        if kind is not None:
            return f"{kind}, not an image file; it was not opened"
    from lightlayers.data import dicom

    if dicom.is_dicom(payload):
        try:
            base, gray = _as_l_or_rgb(dicom.decode(payload, limit))
        except dicom.Refused as e:
            return str(e)
        return _finish(base, gray, size, in_chans, resize)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_unchecked(io.BytesIO(payload) if isinstance(payload, bytes)
                                 else payload) as im:
                if (reason := _too_large(im, limit)) is not None:
                    return reason
                im.load()  # a truncated file fails here rather than decoding half an image
                base, gray = _as_l_or_rgb(im)
    except _Refused as e:
        return str(e)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not an image file Pillow can read"
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as e:
        return _BUFFER_REPR.sub("", f"{type(e).__name__}: {e}")
    return _finish(base, gray, size, in_chans, resize)


def _finish(base: Image.Image, gray: bool, size: int | None, in_chans: int | None, resize: str
            ) -> tuple[np.ndarray, bool, int]:
    """A decoded L or RGB image -> its digest, then channels and size as asked."""
    digest = _digest(base.tobytes(), (base.height, base.width, len(base.getbands())))
    if in_chans == 1 and base.mode == "RGB":
        base = base.convert("L")  # ITU-R 601 luma
    if size is not None:
        base = _resize(base, size, resize)
    return np.asarray(base), gray, digest


def _decode_job(args: tuple[bytes | str, int | None, int | None, str]) -> Any:
    return decode_image(*args)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker holds a copy of the decoded images (hundreds of MB) and waits
    on a queue whose write end it inherited, so it would wait forever if the parent were killed
    (kill -9, OOM killer). The kernel kills it with its parent (PR_SET_PDEATHSIG, sent when the
    thread that forked it ends: the caller of parallel_map, which outlives the pool); where
    prctl is missing, a thread polls the parent's pid instead."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _executor(workers: int) -> Executor:
    """Decoding is CPU-bound and Pillow holds the GIL for much of it: on 2 cores a process pool
    decoded the 5,840 chest X-rays (to 64 px) in 1.8 s, threads in 2.8 s, one thread in 3.2 s.
    Fork, because spawn/forkserver workers would first import torch (via this package) for
    seconds; forking a process with torch loaded is safe here as the workers run only PIL and
    numpy. Elsewhere threads, which still overlap Pillow's GIL-free parts. Workers exit when
    their parent dies (see _die_with_parent)."""
    if sys.platform == "linux":
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
    return ThreadPoolExecutor(workers)


def _progress(
    total: int, desc: str, enabled: bool
) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not (enabled and sys.stderr.isatty()):
        return (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    bar.start()
    task = bar.add_task(desc, total=total)
    return (lambda n: bar.advance(task, n)), bar.stop


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers)
    except AttributeError:
        return os.cpu_count() or 1


def parallel_map(
    fn: Callable[[Any], Any], jobs: Iterable[Any], total: int, desc: str, progress: bool
) -> Iterator[Any]:
    """``map(fn, jobs)`` in order, on all cores when there is enough work."""
    advance, stop = _progress(total, desc, progress)
    try:
        workers = min(_cpu_count(), max(1, total // _MIN_PARALLEL))
        if workers == 1:
            for job in jobs:
                yield fn(job)
                advance(1)
            return
        chunk = max(1, min(64, total // (workers * 8)))
        # Executor.map takes every job at once, and a job may hold an encoded image: submitted
        # a block at a time (the next one while this one is read), the jobs in flight stay
        # within two blocks whatever the dataset's size.
        block = max(_JOB_BLOCK, chunk * workers * 4)
        it = iter(jobs)
        with warnings.catch_warnings():
            # Python >= 3.12 warns on fork() in a process with threads (torch's pool).
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            with _executor(workers) as ex:
                running: Any = None
                while True:
                    jobs_now = list(itertools.islice(it, block))
                    following = ex.map(fn, jobs_now, chunksize=chunk) if jobs_now else None
                    for result in running or ():
                        yield result
                        advance(1)
                    if following is None:
                        break
                    running = following
    finally:
        stop()


def bad_images_error(where: str, bad: list[tuple[str, str]]) -> DataError:
    shown = "; ".join(f"{i}: {msg}" for i, msg in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return DataError(
        f"{where}: {len(bad)} image(s) cannot be decoded: {shown}{more}. Replace or remove "
        "them, or skip them with on_bad_image='skip' (CLI: --on-bad-image skip)."
    )


class _ImageFile:
    """Decoded images written to ``path`` one by one as (C, H, W) rows of a .npy file, grey ones
    with one channel, so memory holds one image at a time whatever the dataset's size. When
    grey and colour images are mixed, :meth:`finish` widens the grey rows to three channels in
    place, from the last row back (a row's new place never lies before its old one)."""

    def __init__(self, path: Path) -> None:
        from lightlayers.data.npyfile import NPY_HEADER_BYTES

        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115 (closed by close)
        self.f.write(b"\0" * NPY_HEADER_BYTES)
        self.start = NPY_HEADER_BYTES
        self.hw: tuple[int, int] | None = None
        self.chans: list[int] = []

    def add(self, a: np.ndarray) -> None:
        if self.hw is None:
            self.hw = a.shape[:2]
        self.chans.append(1 if a.ndim == 2 else 3)
        self.f.write(np.ascontiguousarray(a if a.ndim == 2 else a.transpose(2, 0, 1)).data)

    def close(self) -> None:
        self.f.close()

    def finish(self, in_chans: int) -> tuple[int, ...]:
        """Write the header for ``in_chans`` stored channels; returns the stored shape."""
        from lightlayers.data.npyfile import write_npy_header

        n = len(self.chans)
        h, w = self.hw if self.hw is not None else (0, 0)
        plane = h * w
        shape = (n, in_chans, h, w)
        with open(self.path, "r+b") as f:
            if in_chans == 3 and 1 in self.chans:
                fd = f.fileno()
                old = self.start + plane * np.concatenate([[0], np.cumsum(self.chans)[:-1]])
                for i in range(n - 1, -1, -1):
                    row = os.pread(fd, plane * self.chans[i], int(old[i]))
                    os.pwrite(fd, row * 3 if self.chans[i] == 1 else row,
                              self.start + 3 * plane * i)
            write_npy_header(f, shape)
        return shape


def _size_mismatch_error(where: str, examples: dict[tuple[int, ...], str]) -> DataError:
    shown = ", ".join(f"{i} is {s[1]}x{s[0]}" for s, i in list(examples.items())[:4])
    return DataError(
        f"{where}: images differ in size ({shown}), so there is no native size to keep. "
        "Pass size=PX (CLI: --size PX) to resize every image to PX x PX."
    )


def _resolve_chans(in_chans: int | None, all_gray: bool) -> int:
    return in_chans if in_chans is not None else (1 if all_gray else 3)


def decode_files(
    files: FileSet, opts: PreprocessOptions, on_bad_image: str, where: str, progress: bool,
    out: Path,
) -> Decoded:
    """Decode every file into the .npy file ``out`` (written as images arrive; see
    :class:`_ImageFile`) and return the images memory-mapped from it."""
    max_image_pixels()  # a bad override is one error here, not one per decoding worker
    from lightlayers.data import dicom

    dicom_ids = {it.id for it in files.items if dicom.is_dicom(files.payload(it))}
    if dicom_ids and (missing := dicom.missing_pydicom()) is not None:
        # One line for the dataset, not one reason per file.
        raise DataError(f"{where}: holds DICOM files ({sorted(dicom_ids)[0]}, ...); {missing}")
    jobs = ((files.payload(item), opts.size, opts.in_chans, opts.resize) for item in files.items)
    bad: list[tuple[str, str]] = []
    keep: list[int] = []
    digests: list[int] = []
    all_gray = True
    shapes: dict[tuple[int, ...], str] = {}
    sink = _ImageFile(out)
    try:
        results = parallel_map(_decode_job, jobs, len(files.items), f"decoding {where}", progress)
        for i, (it, r) in enumerate(zip(files.items, results, strict=True)):
            if isinstance(r, str):
                bad.append((it.id, r))
                continue
            keep.append(i)
            all_gray = all_gray and r[1]
            digests.append(r[2])
            shapes.setdefault(r[0].shape[:2], it.id)
            if len(shapes) == 1 and not (bad and on_bad_image != "skip"):
                sink.add(r[0])  # once it must fail, the rest is only looked at for the message
    finally:
        sink.close()
    if bad and on_bad_image != "skip":
        raise bad_images_error(where, bad)
    items = [files.items[i] for i in keep]
    notes = list(files.notes)
    if bad:
        notes.append(
            f"skipped {len(bad)} unreadable image(s): {', '.join(i for i, _ in bad[:5])}"
            + (" ..." if len(bad) > 5 else "")
        )
        for split in sorted({it.split for it in files.items}, key=str):
            present = {it.label for it in items if it.split == split}
            lost = [c for k, c in enumerate(files.classes) if k not in present]
            if lost:
                raise DataError(
                    f"{where}: after skipping unreadable images, class(es) {', '.join(lost)} "
                    f"have no images{f' in {split}' if split else ''}. Fix the images first."
                )
    if dicom_ids:
        notes.extend(dicom.mapping_notes(
            (it.id, files.payload(it)) for it in items if it.id in dicom_ids))
    if len(shapes) > 1:
        raise _size_mismatch_error(where, shapes)
    chans = _resolve_chans(opts.in_chans, all_gray)
    # A grey source keeps one channel on disk and in memory whatever the model takes.
    sink.finish(1 if all_gray else chans)
    return Decoded(
        images=np.load(out, mmap_mode="r", allow_pickle=False),
        labels=np.array([it.label for it in items], np.int64),
        split_codes=np.array([SPLITS.index(it.split) if it.split else -1 for it in items], np.int8),
        digests=np.array(digests, np.uint64),
        classes=files.classes,
        ids=[it.id for it in items],
        source_is_gray=all_gray,
        skipped=bad,
        notes=notes,
        chans=chans,
    )


def _luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's convert("L") on (..., 3) uint8, so array and file sources agree."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def decode_arrays(arrays: ArraySet, opts: PreprocessOptions, out: Path) -> Decoded:
    """The images of ``arrays`` at the options' size and channels, written one by one into the
    .npy file ``out`` (see :class:`_ImageFile`) and returned memory-mapped from it: memory holds
    one image at a time, whatever the arrays' size (a .npz's arrays are themselves mapped from
    a file, lightlayers.data.sources.arrays). Two passes: the first only reads whether every
    image is grey, which decides how each is stored and what its digest covers."""
    parts = list(arrays.splits.items())
    rgb = parts[0][1][0].ndim == 4
    # Read in blocks of 256 images, stopping at the first colour one.
    blocks = (images[i:i + 256] for _, (images, _) in parts for i in range(0, len(images), 256))
    all_gray = not rgb or all((b[..., 0] == b[..., 1]).all() and (b[..., 0] == b[..., 2]).all()
                              for b in blocks)
    in_chans = _resolve_chans(opts.in_chans, all_gray)
    keep_rgb = rgb and not all_gray
    shape = parts[0][1][0].shape[1:3]
    digest_shape = (*shape, 3 if keep_rgb else 1)
    # A square image at the wanted size needs no resampling, unless part of it is cut away.
    unchanged = (opts.size is None or (shape[0] == shape[1] == opts.size and
                                       center_fractions(opts.resize) in (None, (1.0, 1.0))))
    digests: list[int] = []
    sink = _ImageFile(out)
    try:
        for _, (images, _) in parts:
            for im in images:
                im = np.ascontiguousarray(im if keep_rgb or not rgb else im[..., 0])
                digests.append(_digest(im.tobytes(), digest_shape))
                if in_chans == 1 and keep_rgb:
                    im = _luma(im)
                if opts.size is not None and not unchanged:
                    im = np.asarray(_resize(Image.fromarray(im), opts.size, opts.resize))
                sink.add(im)
    finally:
        sink.close()
    sink.finish(3 if keep_rgb and in_chans == 3 else 1)
    return Decoded(
        images=np.load(out, mmap_mode="r", allow_pickle=False),
        labels=np.concatenate([labels for _, (_, labels) in parts]),
        split_codes=np.concatenate([np.full(len(labels), SPLITS.index(split) if split else -1,
                                            np.int8) for split, (_, labels) in parts]),
        digests=np.array(digests, np.uint64),
        classes=arrays.classes,
        ids=None,
        source_is_gray=all_gray,
        notes=list(arrays.notes),
        chans=in_chans,
    )
