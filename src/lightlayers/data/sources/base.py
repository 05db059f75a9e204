"""What every source hands to preprocessing: either encoded image files or decoded arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SPLITS", "ArraySet", "FileItem", "FileSet", "Source", "file_sha256"]

# Split codes stored per image: index into SPLITS, or -1 for images of a source without splits.
SPLITS: tuple[str, str, str] = ("train", "val", "test")


@dataclass(frozen=True)
class FileItem:
    id: str  # path relative to the dataset root, with "/" separators
    split: str | None  # one of SPLITS, or None when the source has no split folders
    label: int


@dataclass
class FileSet:
    """Encoded images, in a stable order; ``payload`` gives a file's bytes or its local path."""

    classes: tuple[str, ...]
    items: list[FileItem]
    payload: Callable[[FileItem], bytes | str]
    notes: list[str] = field(default_factory=list)


@dataclass
class ArraySet:
    """Decoded uint8 images per split: (N, H, W) or (N, H, W, 3), labels (N,) int64. The key
    None holds the images of a source without splits."""

    classes: tuple[str, ...]
    splits: dict[str | None, tuple[np.ndarray, np.ndarray]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Source:
    """A dataset before decoding. ``identity`` is cheap and names the exact bytes (it keys the
    cache); ``read`` does the expensive listing or loading only on a cache miss."""

    name: str
    location: str
    kind: str
    identity: dict[str, Any]
    read: Callable[[], FileSet | ArraySet]
    # File -> short content hash, for sources made of many files (folders): a run folder keeps
    # it to say which files changed when the data under its path is not the same any more.
    manifest: dict[str, str] | None = None
    # File -> patient id, for sources that name each image's patient (a manifest's patient
    # column); None: patients are read from file names with the patient pattern.
    patients: dict[str, str | None] | None = None
    patient_column: str | None = None  # where ``patients`` came from, for the summary


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (archives and .npz files identify sources)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
