"""The decoded-image cache: one folder of uncompressed .npy files per (source bytes, options).

``$LIGHTLAYERS_CACHE/datasets/<name>-<key>-v<format>/{images,labels,splits,digests}.npy +
meta.json``. A folder is written under a temporary name beside its final one and renamed into
place when complete (an atomic rename), so a crash or a concurrent writer never leaves a
half-written entry that a reader could take for a finished one. Entries are opened
memory-mapped and read-only. Images are written into the temporary folder as they are decoded
(:class:`NewEntry`), so a decode never holds the whole dataset in memory.

A grey source is stored with one channel whatever channel count was asked for: ``meta.json``
``chans`` says how many channels its images are presented with (1, or 3 for a grey source
decoded for a 3-channel model), ``shape`` what ``images.npy`` holds.

Every read is verified (:func:`read_entry`); an entry that fails is a miss, so it is decoded
again and replaced, and a :class:`CacheWarning` names it. Arrays are read with
``allow_pickle=False``: a cache file can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.data.npyfile import write_npy_header
from lightlayers.data.preprocess import Decoded, PreprocessOptions
from lightlayers.data.sources.base import SPLITS

__all__ = [
    "FORMAT_VERSION", "CacheWarning", "NewEntry", "cache_key", "cache_root", "entry_path",
    "load_entry", "read_entry", "store_entry", "write_npy_header",
]

# Bump when the meaning of cached arrays changes (decoding, digests, layout).
# 2: images in modes I, F and with alpha decode by the documented mapping (data.preprocess);
# entries of version 1 hold the older pixels, so they are decoded again.
# 3: grey sources stored with one channel (meta.json "chans" gives the presented count); the
# folder name carries the version, so entries of version 2 stay untouched where they are (a
# process still reading them keeps working) and are never read by this version.
FORMAT_VERSION = 3
# The key names a decode (source and options), and through the trial keys of run folders a
# trial's data: it stays put when only the format version moves, so recorded trials resume.
KEY_VERSION = 1


def cache_root() -> Path:
    """``$LIGHTLAYERS_CACHE``, else ``~/.cache/lightlayers``."""
    return Path(os.environ.get("LIGHTLAYERS_CACHE") or "~/.cache/lightlayers").expanduser()


def cache_key(identity: dict[str, Any], opts: PreprocessOptions) -> str:
    blob = json.dumps(
        {"version": KEY_VERSION, "source": identity, "preprocess": opts.key_fields()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_path(name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "dataset"
    return cache_root() / "datasets" / f"{safe}-{key}-v{FORMAT_VERSION}"


class CacheWarning(UserWarning):
    """A cache entry failed verification and was rebuilt; the message names the file."""


# meta.json keys every entry has, with the type each must hold.
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "version": int, "n": int, "shape": list, "classes": list, "ids": (list, type(None)),
    "source_is_gray": bool, "skipped": list, "notes": list, "chans": int,
}
# dtype and rank of each array (images are also checked against meta["shape"]).
_ARRAY_SPECS = {"images": (np.uint8, 4), "labels": (np.int64, 1), "splits": (np.int8, 1),
                "digests": (np.uint64, 1)}
_SMALL = ("labels", "splits", "digests")  # checksummed in meta.json: cheap to read in full


def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:32]


def read_entry(path: Path) -> tuple[Decoded | None, str | None]:
    """``(entry, None)``, or ``(None, why)`` when the entry at ``path`` is unusable, or
    ``(None, None)`` when there is none.

    Every read is verified: meta.json's keys and types, each array's dtype, rank and length,
    the image shape, label and split ranges, and (entries written since they were added) the
    checksums of the small arrays. Arrays are never unpickled.
    """
    if not path.is_dir():
        return None, None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return None, "meta.json is missing"
    except (OSError, ValueError) as e:
        return None, f"meta.json is unreadable ({e})"
    if not isinstance(meta, dict):
        return None, "meta.json does not hold a mapping"
    if "version" in meta and meta["version"] != FORMAT_VERSION:
        return None, f"format version {meta['version']}, this lightlayers writes {FORMAT_VERSION}"
    for key, tp in _META_TYPES.items():
        if key not in meta:
            return None, f"meta.json has no {key!r}"
        if not isinstance(meta[key], tp) or (tp is int and isinstance(meta[key], bool)):
            return None, f"meta.json {key!r} is {type(meta[key]).__name__}"
    n, classes = meta["n"], meta["classes"]
    if len(meta["shape"]) != 4 or meta["shape"][0] != n:
        return None, f"meta.json shape {meta['shape']} is not ({n}, C, H, W)"
    stored, chans = meta["shape"][1], meta["chans"]
    if chans not in (1, 3) or not (stored == chans or (stored == 1 and meta["source_is_gray"])):
        return None, f"meta.json chans {chans} for {stored}-channel images"
    if meta["ids"] is not None and len(meta["ids"]) != n:
        return None, f"meta.json lists {len(meta['ids'])} ids for {n} images"
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, ndim) in _ARRAY_SPECS.items():
        try:
            # A truncated file fails here (its header promises more bytes than there are).
            a = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None, f"{name}.npy is missing"
        except (OSError, ValueError) as e:
            return None, f"{name}.npy is unreadable ({e})"
        if a.dtype != dtype or a.ndim != ndim or len(a) != n:
            return None, (f"{name}.npy holds {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                          f"with {n} rows")
        arrays[name] = a
    if list(arrays["images"].shape) != meta["shape"]:
        return None, f"images.npy shape {list(arrays['images'].shape)} != {meta['shape']}"
    sums = meta.get("checksums")
    if sums is not None:
        for name in _SMALL:
            if not isinstance(sums, dict) or sums.get(name) != _checksum(arrays[name]):
                return None, f"{name}.npy does not match its checksum in meta.json"
    labels, splits = arrays["labels"], arrays["splits"]
    if n and (labels.min() < 0 or labels.max() >= len(classes)):
        return None, f"labels.npy holds labels outside 0..{len(classes) - 1}"
    if n and (splits.min() < -1 or splits.max() >= len(SPLITS)):
        return None, f"splits.npy holds codes outside -1..{len(SPLITS) - 1}"
    return Decoded(
        images=arrays["images"],
        labels=labels,
        split_codes=splits,
        digests=arrays["digests"],
        classes=tuple(classes),
        ids=meta["ids"],
        source_is_gray=meta["source_is_gray"],
        skipped=meta["skipped"],
        notes=meta["notes"],
        chans=chans,
    ), None


def load_entry(path: Path) -> Decoded | None:
    """The entry at ``path``, or None when it is missing or unusable (then it is rebuilt, and
    :func:`store_entry` names the entry it replaces)."""
    return read_entry(path)[0]


class NewEntry:
    """A cache entry being written: a temporary folder in the cache, whose ``images`` file a
    decoder fills, then :meth:`commit` renames into place. Leaving the ``with`` block without a
    commit removes it."""

    def __init__(self) -> None:
        root = cache_root() / "datasets"
        root.mkdir(parents=True, exist_ok=True)
        self.tmp = root / f".new.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        self.tmp.mkdir()
        self.images = self.tmp / "images.npy"

    def __enter__(self) -> NewEntry:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, path: Path, decoded: Decoded, info: dict[str, Any]) -> Decoded:
        """Write ``decoded``'s small arrays and meta.json beside the images (saved here from
        ``decoded.images`` unless a decoder wrote them already), rename the folder to ``path``
        and return the entry reopened from disk. An unusable entry already at ``path`` is
        replaced, with a :class:`CacheWarning` naming it."""
        tmp = self.tmp
        if not self.images.exists():
            np.save(self.images, decoded.images, allow_pickle=False)
        small: dict[str, np.ndarray] = {"labels": np.asarray(decoded.labels, np.int64),
                 "splits": np.asarray(decoded.split_codes, np.int8),
                 "digests": np.asarray(decoded.digests, np.uint64)}
        for name, a in small.items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
        meta = {
            "version": FORMAT_VERSION,
            "n": len(decoded.labels),
            "shape": list(decoded.images.shape),
            "chans": decoded.chans or int(decoded.images.shape[1]),
            "classes": list(decoded.classes),
            "ids": decoded.ids,
            "source_is_gray": decoded.source_is_gray,
            "skipped": decoded.skipped,
            "notes": decoded.notes,
            "checksums": {name: _checksum(a) for name, a in small.items()},
            **info,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        # An empty folder at ``path`` would be replaced silently by the rename: check first.
        replaced = read_entry(path)[1]
        try:
            os.replace(tmp, path)
        except OSError:
            # The final folder exists: a concurrent writer finished first (use theirs), or an
            # unusable old entry is in the way (replace it).
            replaced = read_entry(path)[1]
            if replaced is not None:
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
        entry, problem = read_entry(path)
        if entry is None:
            raise OSError(f"{path}: the cache entry just written cannot be read back ({problem})")
        if replaced is not None:
            warnings.warn(f"decoded-image cache: replaced the unusable entry {path} ({replaced})",
                          CacheWarning, stacklevel=3)
        return entry


def store_entry(path: Path, decoded: Decoded, info: dict[str, Any]) -> Decoded:
    """Write ``decoded`` (held in memory) as the entry at ``path`` and return it reopened from
    disk; see :meth:`NewEntry.commit`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with NewEntry() as new:
        return new.commit(path, decoded, info)
