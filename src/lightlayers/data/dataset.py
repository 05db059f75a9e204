"""``load_dataset``: source -> decoded-image cache -> train/val/test :class:`Dataset`."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightlayers.data.cache import NewEntry, cache_key, cache_root, entry_path, load_entry
from lightlayers.data.errors import DataError, DuplicateImagesWarning
from lightlayers.data.preprocess import (
    Decoded,
    PreprocessOptions,
    bad_images_error,
    center_fractions,
    decode_arrays,
    decode_files,
)
from lightlayers.data.sources import ArraySet, Source, open_source
from lightlayers.data.splits import (
    DEFAULT_PATIENT_PATTERN,
    check_class_presence,
    check_label_range,
    plan_splits,
)

__all__ = ["Dataset", "Rows", "Split", "load_dataset"]


class Rows:
    """Rows ``index`` of a read-only array (the memory-mapped cache), read only when asked for:
    a split that is not one run of the cache file costs no memory until a batch is taken.

    Behaves as the read-only (N, C, H, W) array it stands for: ``shape``, ``len``, iteration,
    an int row, a slice (another :class:`Rows`), an index array or ``np.take`` (a gathered
    copy of those rows), ``np.asarray`` (a copy of them all); other array methods act on that
    copy. :class:`~lightlayers.data.DeviceLoader` gathers its batches from ``base`` directly.
    """

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base = base
        self.index = _read_only(np.asarray(index, np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.base.itemsize

    @property
    def flags(self) -> Any:
        return self.base.flags

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Any:
        return (self.base[i] for i in self.index)

    def take(self, indices: Any, axis: int | None = None, out: Any = None,
             mode: str = "raise") -> np.ndarray:
        if axis != 0 or out is not None or mode != "raise":
            return np.asarray(self).take(indices, axis=axis, out=out,
                                         mode=mode)  # type: ignore[call-overload]
        return self._gather(self.index[np.asarray(indices)])

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        return np.take(self.base, rows, axis=0)

    def __getitem__(self, key: Any) -> Any:
        head, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(head, int | np.integer):
            row = self.base[self.index[head]]
            return row[rest] if rest else row
        picked = self.index[head]
        if isinstance(head, slice) and not rest:
            return Rows(self.base, picked)
        return self._gather(picked)[(slice(None), *rest)] if rest else self._gather(picked)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise ValueError("assignment destination is read-only")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = self._gather(self.index)
        return a if dtype is None else a.astype(dtype)

    def __getattr__(self, name: str) -> Any:
        # Array methods (max, reshape, tobytes, ...) act on a copy. Never numpy's protocol
        # attributes: a pointer into a temporary copy would outlive it.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __repr__(self) -> str:
        return f"Rows({len(self.index)} of {self.base.shape[0]} rows, shape={self.shape})"


@dataclass(frozen=True, eq=False)
class Split:
    """One split: read-only uint8 images (N, C, H, W), int64 labels (N,), and file names.

    Loaded from the cache, ``images`` is a view of the memory-mapped file: a slice of it, or
    :class:`Rows` when the split's images are not one run of it; the images of a grey source
    decoded for 3 channels are the one stored channel repeated (a stride-0 view)."""

    images: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: always "train", "val" and "test" splits, in ``classes`` label order."""

    name: str
    source: str
    classes: tuple[str, ...]
    splits: dict[str, Split]
    positive_class: int | None
    identity: dict[str, Any]
    notes: tuple[str, ...]
    # Duplicates, patient grouping and split sizes as computed at load time (see summary()).
    details: Mapping[str, Any] = field(default_factory=dict)
    # (file, reason) of every image left out with on_bad_image="skip"; file is relative to the
    # source (folder or archive). Always empty for array sources, which hold no encoded files.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def release(self) -> None:
        """Drop the cache file's pages from this process's memory (they stay in the page cache,
        so the next read costs no disk access): after a model, before one that reads another
        size. Arrays not mapped from the cache are left alone."""
        seen: set[int] = set()
        for split in self.splits.values():
            a: Any = split.images.base if isinstance(split.images, Rows) else split.images
            while a is not None:
                mm = getattr(a, "_mmap", None)
                if mm is not None and id(mm) not in seen:
                    seen.add(id(mm))
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        mm.madvise(mmap.MADV_DONTNEED)
                a = getattr(a, "base", None)

    @property
    def in_chans(self) -> int:
        return int(self.splits["train"].images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.splits["train"].images.shape[2])

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (what ``lightlayers data summary --json`` prints)."""
        counts = {
            name: {
                c: int(n)
                for c, n in zip(
                    self.classes, np.bincount(s.labels, minlength=self.num_classes), strict=True
                )
            }
            for name, s in self.splits.items()
        }
        patients = self.details.get("patients")
        if patients and "per_split" in patients:
            # Class names for the label indices the split plan counts patients by.
            patients = {**patients, "per_split": {
                split: dict(zip(self.classes, n, strict=False))
                for split, n in patients["per_split"].items()}}
        return {
            "name": self.name,
            "source": self.source,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "splits": counts,
            "split_sizes": {name: len(s) for name, s in self.splits.items()},
            "image_size": list(self.splits["train"].images.shape[1:]),
            "cache": self.identity.get("cache_path"),
            "duplicates": dict(self.details.get("duplicates", {})),
            "duplicates_within": dict(self.details.get("duplicates_within", {})),
            "patient_grouping": patients,
            # Patients in both train and val (the split this library carves; 0 by design).
            "patient_overlap": patients["overlap"].get("train/val", 0) if patients else 0,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            # Split -> classes without images there (only when allowed or in a carved split).
            "missing_classes": dict(self.details.get("missing_classes", {})),
            "allow_missing_classes": bool(self.details.get("allow_missing_classes", False)),
            "notes": list(self.notes),
            "identity": self.identity,
        }


def _positive_class(classes: tuple[str, ...]) -> int | None:
    lower = [c.lower() for c in classes]
    if "pneumonia" in lower:
        return lower.index("pneumonia")
    return 1 if len(classes) == 2 else None


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.flags.writeable = False
    return a


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a (memory-mapped) array, as a copy: for the small per-image arrays."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return _read_only(a[idx[0] : idx[-1] + 1])
    return _read_only(np.take(a, idx, axis=0))


def _view(images: np.ndarray, chans: int, idx: np.ndarray) -> np.ndarray | Rows:
    """Rows ``idx`` of the cached images without copying them: a slice when they are one run
    of the file, else :class:`Rows`; one stored channel shown as ``chans``."""
    if images.shape[1] != chans:
        images = _read_only(np.broadcast_to(images, (len(images), chans, *images.shape[2:])))
    idx = np.asarray(idx, np.int64)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all():
        return _read_only(images[idx[0] : idx[-1] + 1])
    if not len(idx):
        return _read_only(images[:0])
    return Rows(images, idx)


def _skipped_pairs(skipped: list[Any]) -> list[tuple[str, str]]:
    """(file, reason) pairs; cache entries written before reasons were kept hold bare names."""
    return [
        (str(x), "cannot be decoded") if isinstance(x, str) else (str(x[0]), str(x[1]))
        for x in skipped
    ]


def _check_options(
    size: int | None,
    in_chans: int | None,
    resize: str,
    val_fraction: float,
    resplit: float | None,
    patient_pattern: str | None,
    on_bad_image: str,
) -> None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise DataError(f"size must be a positive int or None, got {size!r}")
    if in_chans not in (None, 1, 3):
        raise DataError(f"in_chans must be 1, 3 or None (= as the source), got {in_chans!r}")
    try:
        fractions = center_fractions(resize)
    except ValueError as e:
        raise DataError(f"resize: {e}, got {resize!r}") from None
    if fractions is not None and size is None:
        raise DataError(f"resize {resize!r} cuts the images, so it needs a size (--size PX)")
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    if resplit is not None and not 0 < resplit < 1:
        raise DataError(f"resplit (the test share) must be between 0 and 1, got {resplit!r}")
    if patient_pattern is not None:
        try:
            re.compile(patient_pattern)
        except re.error as e:
            raise DataError(f"patient_pattern {patient_pattern!r} is not a regex: {e}") from e


def _decoded(
    src: Source, opts: PreprocessOptions, on_bad_image: str, progress: bool
) -> tuple[Decoded, str, str]:
    """The decoded images from the cache, or decoded now and cached; with key and path.

    With ``in_chans=None`` the channel count is only known after decoding, so the entries for
    1 and 3 channels are tried first: one made from a grey source is the 1-channel answer.
    """
    tries = [opts] if opts.in_chans else [opts.with_chans(1), opts.with_chans(3)]
    for o in tries:
        key = cache_key(src.identity, o)
        path = entry_path(src.name, key)
        entry = load_entry(path)
        if entry is not None and (opts.in_chans or entry.source_is_gray == (o.in_chans == 1)):
            return entry, key, str(path)
    raw = src.read()
    path = cache_root() / "datasets"  # until the decode tells the key
    try:
        with NewEntry() as new:
            if isinstance(raw, ArraySet):
                decoded = decode_arrays(raw, opts, new.images)
            else:
                decoded = decode_files(raw, opts, on_bad_image, src.location, progress,
                                       new.images)
            resolved = opts.with_chans(decoded.chans or int(decoded.images.shape[1]))
            key = cache_key(src.identity, resolved)
            path = entry_path(src.name, key)
            info = {"source": src.location, "identity": src.identity,
                    "options": resolved.key_fields()}
            return new.commit(path, decoded, info), key, str(path)
    except OSError as e:
        raise DataError(
            f"cannot write the decoded-image cache at {path} ({e}). Point LIGHTLAYERS_CACHE at "
            "a writable folder with room for it."
        ) from e


def load_dataset(
    source: str | os.PathLike[str],
    size: int | None = None,
    in_chans: int | None = None,
    resize: str = "stretch",
    val_fraction: float = 0.1,
    seed: int = 0,
    resplit: float | None = None,
    patient_pattern: str | None = DEFAULT_PATIENT_PATTERN,
    on_bad_image: str = "error",
    progress: bool = True,
    allow_missing_classes: bool = False,
) -> Dataset:
    """Load a dataset as uint8 train/val/test arrays, decoding it only on the first call.

    Args:
        source: a path (image-folder tree, .tar.gz/.tgz/.zip of one, MedMNIST-style .npz,
            folder of MNIST IDX files) or a short name (``lightlayers data list``).
        size: square output side in pixels; None keeps the native size (all images must share
            it).
        in_chans: 1 or 3; None gives 1 when every image is grey, else 3.
        resize: "stretch" (ignore the aspect ratio, as the study), "crop" (center square,
            as MedMNIST) or "center:WxH" (the central fractions W of the width and H of the
            height, then stretched).
        val_fraction: share of train carved as val when the source has no usable val split.
        seed: seed of every carved split.
        resplit: pool all images and carve this test share afresh (0.3 -> 70/30).
        patient_pattern: regex on file names; its first group that matches is the patient id
            (the default reads `personN_` and `IM-NNNN`/`NORMAL2-IM-NNNN`); images of one
            patient never straddle a carved split. None disables grouping.
        on_bad_image: "error" (list the unreadable files) or "skip" them: they are left out,
            warned about, and listed with their reasons in ``Dataset.skipped`` and the summary.
            Array sources (.npz, IDX, digits) hold no encoded files, so nothing is skipped.
        progress: show a progress bar while decoding (only when stderr is a terminal).
        allow_missing_classes: keep a dataset in which a class has no images in train, in the
            source's own val or test split, or anywhere (a gap in the labels). By default each
            is an error naming the split and the counts; allowed, it is a note, and the summary
            lists the missing classes per split. Labels outside the declared classes are always
            an error.

    Example::

        ds = load_dataset("../shared/data/chest_xray_pneumonia/chest_xray_224.tar.gz", size=64)
        ds.splits["train"].images.shape  # (4692, 1, 64, 64)
    """
    _check_options(size, in_chans, resize, val_fraction, resplit, patient_pattern, on_bad_image)
    if not isinstance(allow_missing_classes, bool):
        raise DataError(f"allow_missing_classes must be True or False, got {allow_missing_classes}")
    src = open_source(source)
    opts = PreprocessOptions(size=size, in_chans=in_chans, resize=resize)
    decoded, key, path = _decoded(src, opts, on_bad_image, progress)
    skipped = _skipped_pairs(decoded.skipped)
    if skipped and on_bad_image != "skip":
        # The cached entry was built with on_bad_image="skip"; strict mode still refuses it.
        raise bad_images_error(src.location, skipped)
    # Every source passes here, so one check covers folders, archives, .npz, IDX and digits.
    check_label_range(decoded.labels, decoded.split_codes, decoded.classes, src.location)
    known = None
    if src.patients is not None and decoded.ids is not None:
        known = [src.patients.get(i) for i in decoded.ids]
    plan = plan_splits(
        decoded.labels,
        decoded.split_codes,
        decoded.digests,
        decoded.ids,
        val_fraction,
        seed,
        resplit,
        patient_pattern,
        known_patients=known,
        patient_column=src.patient_column,
    )
    missing, class_notes = check_class_presence(
        decoded.labels,
        plan.indices,
        decoded.classes,
        plan.carved,
        allow_missing_classes,
        src.location,
    )
    notes = [*decoded.notes, *plan.notes, *class_notes]
    if skipped:
        warnings.warn(f"{src.name}: skipped {len(skipped)} unreadable image(s)", stacklevel=2)
    if any(plan.duplicates.values()):
        shown = ", ".join(f"{k}: {v}" for k, v in plan.duplicates.items() if v)
        warnings.warn(
            f"{src.name}: identical images in more than one split ({shown})",
            DuplicateImagesWarning,
            stacklevel=2,
        )
    chans = decoded.chans or int(decoded.images.shape[1])
    splits = {
        name: Split(
            # Rows: an index over the memory map that reads like the array.
            images=_view(decoded.images, chans, idx),  # type: ignore[arg-type]
            labels=_take(decoded.labels, idx),
            ids=None if decoded.ids is None else tuple(decoded.ids[i] for i in idx),
        )
        for name, idx in plan.indices.items()
    }
    identity = {
        "source": src.location,
        **{k: v for k, v in src.identity.items() if k != "kind"},
        "kind": src.kind,
        "options": {
            **opts.with_chans(chans).key_fields(),
            "val_fraction": val_fraction,
            "seed": seed,
            "resplit": resplit,
            "patient_pattern": patient_pattern,
            "on_bad_image": on_bad_image,
            "allow_missing_classes": allow_missing_classes,
        },
        "cache_key": key,
        "cache_path": path,
    }
    return Dataset(
        name=src.name,
        source=src.location,
        classes=decoded.classes,
        splits=splits,
        positive_class=_positive_class(decoded.classes),
        identity=identity,
        notes=tuple(notes),
        details={
            # File -> size and content hash (folder sources): what a run folder compares.
            "manifest": src.manifest,
            "patients": plan.patients,
            "duplicates": plan.duplicates,
            "duplicates_within": plan.duplicates_within,
            "missing_classes": missing,
            "allow_missing_classes": allow_missing_classes,
        },
        skipped=tuple(skipped),
    )
