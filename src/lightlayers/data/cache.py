"""The decoded-image cache: one folder of uncompressed .npy files per (source bytes, options).

``$LIGHTLAYERS_CACHE/datasets/<name>-<key>/{images,labels,splits,digests}.npy + meta.json``.
A folder is written under a temporary name beside its final one and renamed into place when
complete (an atomic rename), so a crash or a concurrent writer never leaves a half-written entry
that a reader could take for a finished one. Entries are opened memory-mapped and read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.data.preprocess import Decoded, PreprocessOptions

__all__ = ["FORMAT_VERSION", "cache_key", "cache_root", "entry_path", "load_entry", "store_entry"]

# Bump when the meaning of cached arrays changes (decoding, digests, layout).
FORMAT_VERSION = 1
_ARRAYS = ("images", "labels", "splits", "digests")


def cache_root() -> Path:
    """``$LIGHTLAYERS_CACHE``, else ``~/.cache/lightlayers``."""
    return Path(os.environ.get("LIGHTLAYERS_CACHE") or "~/.cache/lightlayers").expanduser()


def cache_key(identity: dict[str, Any], opts: PreprocessOptions) -> str:
    blob = json.dumps(
        {"version": FORMAT_VERSION, "source": identity, "preprocess": opts.key_fields()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_path(name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "dataset"
    return cache_root() / "datasets" / f"{safe}-{key}"


def load_entry(path: Path) -> Decoded | None:
    """The entry at ``path``, or None when it is missing or unusable (then it is rebuilt)."""
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION:
            return None
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in _ARRAYS}
    except (OSError, ValueError, KeyError):
        return None
    n = meta["n"]
    if any(len(a) != n for a in arrays.values()) or list(arrays["images"].shape) != meta["shape"]:
        return None
    return Decoded(
        images=arrays["images"],
        labels=arrays["labels"],
        split_codes=arrays["splits"],
        digests=arrays["digests"],
        classes=tuple(meta["classes"]),
        ids=meta["ids"],
        source_is_gray=meta["source_is_gray"],
        skipped=meta["skipped"],
        notes=meta["notes"],
    )


def store_entry(path: Path, decoded: Decoded, info: dict[str, Any]) -> Decoded:
    """Write ``decoded`` as the entry at ``path`` and return it reopened from disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        np.save(tmp / "images.npy", decoded.images)
        np.save(tmp / "labels.npy", np.asarray(decoded.labels, np.int64))
        np.save(tmp / "splits.npy", np.asarray(decoded.split_codes, np.int8))
        np.save(tmp / "digests.npy", np.asarray(decoded.digests, np.uint64))
        meta = {
            "version": FORMAT_VERSION,
            "n": len(decoded.labels),
            "shape": list(decoded.images.shape),
            "classes": list(decoded.classes),
            "ids": decoded.ids,
            "source_is_gray": decoded.source_is_gray,
            "skipped": decoded.skipped,
            "notes": decoded.notes,
            **info,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, path)
        except OSError:
            # The final folder exists: a concurrent writer finished first (use theirs), or an
            # unusable old entry is in the way (replace it).
            if load_entry(path) is None:
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = load_entry(path)
    if entry is None:
        raise OSError(f"{path}: the cache entry just written cannot be read back")
    return entry
