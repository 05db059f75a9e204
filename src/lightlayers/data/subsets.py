"""Nested training subsets for learning curves: a share of the training split (``0.1``) or a
number of images per class (``50``), drawn by patient and stratified by class.

Each class's patients (images without a patient id are their own group) are put in one seeded
order; a subset takes the shortest prefix of that order holding at least its target of images.
Every size reads the same order, so a smaller subset is always a prefix, hence a subset, of a
larger one, per class: the curve measures more data, never other data. The order depends only
on the file names, labels and the seed, not on the decode size, so every model of a study
trains on the same images at a given size. Validation and test are never touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightlayers.data.dataset import Dataset, Split
from lightlayers.data.errors import DataError
from lightlayers.data.splits import group_images, patient_ids

__all__ = ["FULL", "SubsetError", "TrainSize", "TrainSubset", "base_key", "draw_subset",
           "main_size", "parse_train_size", "parse_train_sizes", "sized_key", "subset_dataset",
           "train_images", "train_size"]

SIZE_HELP = ("a fraction of the training split (0 < x <= 1, e.g. 0.1; 1 or all: the whole "
             "split) or a whole number of images per class (>= 2, e.g. 50)")
# The random stream of subsets; carve() uses 0 (test) and 1 (validation) of the same seed.
_STREAM = 2
# Marks the size in a trial's data key: `digits@0123abcd|train=0.1`.
_KEY_MARK = "|train="


class SubsetError(DataError):
    """A training size the data cannot give (a class has fewer images than asked)."""


@dataclass(frozen=True)
class TrainSize:
    """One training-set size. ``label`` is its one spelling in trial keys and reports:
    ``0.1``, ``50/class``, or ``all`` for the whole training split."""

    label: str
    fraction: float | None = None
    per_class: int | None = None

    @property
    def full(self) -> bool:
        return self.fraction == 1.0


FULL = TrainSize("all", fraction=1.0)


def parse_train_size(value: Any) -> TrainSize:
    """``value`` (a number, or text such as ``0.25``, ``100``, ``100/class``, ``all``) as a
    :class:`TrainSize`; ValueError saying what a size may be."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or not text:
        raise ValueError(f"{value!r} is not a training size: give {SIZE_HELP}")
    if text == "all":
        return FULL
    number = text.removesuffix("/class")
    try:
        x = float(number)
    except ValueError:
        raise ValueError(f"{value!r} is not a training size: give {SIZE_HELP}") from None
    if not math.isfinite(x) or x <= 0 or (x > 1 and x != int(x)) \
            or (number != text and (x != int(x) or x < 2)):
        raise ValueError(f"{value!r} is not a training size: give {SIZE_HELP}")
    if x == 1:
        return FULL
    if x < 1:
        return TrainSize(f"{x:g}", fraction=x)
    return TrainSize(f"{int(x)}/class", per_class=int(x))


def parse_train_sizes(values: Any) -> tuple[TrainSize, ...]:
    """Every size of ``values`` (a sequence, or comma-separated text), each once; ValueError
    naming the first bad or repeated one."""
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[TrainSize] = []
    for v in items:
        size = parse_train_size(v)
        if size in out:
            raise ValueError(f"{v!r} repeats the size {size.label}; give each size once")
        out.append(size)
    return tuple(out)


def sized_key(data_key: str, size: str | None) -> str:
    """A trial's data key with its training size; the whole split keeps the bare key, so a
    study without sizes keys its trials as before sizes existed."""
    return data_key if size is None else f"{data_key}{_KEY_MARK}{size}"


def base_key(key: str) -> str:
    """The data key without a training size (what the decoded dataset itself is keyed by)."""
    return key.split(_KEY_MARK, 1)[0]


@dataclass(frozen=True)
class TrainSubset:
    """The training images of one size: ascending indices into the training split."""

    size: TrainSize
    members: np.ndarray
    per_class: tuple[int, ...]
    groups: int | None  # patients (or single images) drawn; None for the whole split
    available: int  # images in the training split

    @property
    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.members, dtype=np.int64).tobytes())
        return f"{len(self.members)}:{h.hexdigest()[:16]}"

    def record(self, classes: tuple[str, ...]) -> dict[str, Any]:
        """What a trial records of its training images (part of its data identity): the size,
        the counts, and the members' digest; a subset also lists its members (indices into
        the training split), so its nesting in a larger one can be checked from the record."""
        out: dict[str, Any] = {
            "size": self.size.label, "images": len(self.members),
            "of": int(self.available),
            "per_class": dict(zip(classes, map(int, self.per_class), strict=True)),
            "members": self.digest,
        }
        if not self.size.full:
            out["groups"] = self.groups
            out["indices"] = self.members.tolist()
        return out


# Source -> its manifest's patient column (id -> patient), read once per process.
_COLUMNS: dict[tuple[str, str], dict[str, str | None]] = {}


def _patient_groups(ds: Dataset) -> np.ndarray:
    """Group number per training image: one per patient, as the split was carved (a
    manifest's patient column, else the patient pattern on file names); an image without a
    patient id (or a source without file names) is a group of its own. Pixels play no part,
    so the groups are the same at every decode size."""
    train = ds.splits["train"]
    n = len(train)
    pattern = (ds.identity.get("options") or {}).get("patient_pattern")
    if train.ids is None:
        return np.arange(n, dtype=np.int64)
    how = str(((ds.details or {}).get("patients") or {}).get("pattern") or "")
    if how.startswith("column "):  # see data.splits.plan_splits
        key = (ds.source, str(ds.identity.get("cache_key")))
        if key not in _COLUMNS:
            from lightlayers.data.sources import open_source

            try:
                _COLUMNS[key] = open_source(ds.source).patients or {}
            except (DataError, OSError) as e:
                # E.g. a Ray node that got the images but cannot see the manifest.
                raise SubsetError(f"training subsets are drawn by the patient column of "
                                  f"{ds.source}, which cannot be read here ({e}); make it "
                                  "readable where the trials run") from e
        patients = [_COLUMNS[key].get(i) for i in train.ids]
    elif pattern:
        patients = patient_ids(list(train.ids), pattern)
    else:
        return np.arange(n, dtype=np.int64)
    return group_images(patients, np.arange(n))


def draw_subset(ds: Dataset, size: TrainSize, seed: int) -> TrainSubset:
    """The training images of ``size`` (see the module docstring); :class:`SubsetError` when
    a class has fewer images than a per-class size asks for."""
    labels = np.asarray(ds.splits["train"].labels, dtype=np.int64)
    n, k = len(labels), ds.num_classes
    if size.full:  # no grouping needed: every trial without a size passes here
        everything = np.arange(n, dtype=np.int64)
        return TrainSubset(size, everything, tuple(np.bincount(labels, minlength=k).tolist()),
                           None, n)
    uniq, inv = np.unique(_patient_groups(ds), return_inverse=True)
    counts = np.bincount(inv, minlength=len(uniq))
    per_group = np.zeros((len(uniq), k), np.int64)
    np.add.at(per_group, (inv, labels), 1)
    # A patient imaged under two labels counts for the class of most of their images.
    stratum = per_group.argmax(axis=1)
    rng = np.random.default_rng([seed, _STREAM])
    chosen = np.zeros(len(uniq), bool)
    for c in range(k):
        # Drawn for every class whatever the size: each size reads the same orders.
        order = rng.permutation(np.flatnonzero(stratum == c))
        have = int(counts[order].sum())
        if have == 0:
            continue  # a class without training images (allow_missing_classes)
        if size.per_class is not None:
            if size.per_class > have:
                raise SubsetError(
                    f"train_sizes: {size.per_class} images per class is more than class "
                    f"{ds.classes[c]!r} has in the training split ({have} images); give at "
                    f"most {have} per class, or a fraction such as 0.5")
            target = size.per_class
        else:
            assert size.fraction is not None
            target = max(1, round(size.fraction * have))
        # The shortest prefix holding at least the target: monotone in the target, so nested.
        take = int(np.searchsorted(np.cumsum(counts[order]), target)) + 1
        chosen[order[:take]] = True
    members = np.flatnonzero(chosen[inv]).astype(np.int64)
    return TrainSubset(size, members, tuple(np.bincount(labels[members], minlength=k).tolist()),
                       int(chosen.sum()), n)


def subset_dataset(ds: Dataset, subset: TrainSubset) -> Dataset:
    """``ds`` with its training split cut to ``subset``; validation and test as they were."""
    if subset.size.full:
        return ds
    train = ds.splits["train"]
    idx = subset.members

    def take(a: np.ndarray) -> np.ndarray:
        out = np.take(a, idx, axis=0)
        out.flags.writeable = False
        return out

    cut = Split(images=take(train.images), labels=take(np.asarray(train.labels)),
                ids=None if train.ids is None else tuple(train.ids[i] for i in idx))
    return dataclasses.replace(
        ds, splits={**ds.splits, "train": cut},
        identity={**ds.identity, "train_subset": {"size": subset.size.label,
                                                  "members": subset.digest}},
        notes=(*ds.notes, f"training subset {subset.size.label}: {len(idx)} of "
                          f"{subset.available} training images, {subset.groups} patients or "
                          "single images, drawn per class"))


# --- a study's sizes, as its trials record them ---------------------------------------------
def train_size(t: dict[str, Any]) -> str | None:
    """A trial's training size (its ``config``'s); None: the whole training split."""
    return (t.get("config") or {}).get("train_size")


def train_images(t: dict[str, Any]) -> int | None:
    return ((t.get("extra") or {}).get("train_set") or {}).get("images")


def main_size(trials: list[dict[str, Any]]) -> str | None:
    """The training size the report's tables show: the whole split when the study has it,
    else the size whose finished trials trained on the most images."""
    sizes = {train_size(t) for t in trials}
    if None in sizes or not sizes:
        return None
    images: dict[str | None, int] = {}
    for t in trials:
        if (n := train_images(t)) is not None:
            images[train_size(t)] = max(images.get(train_size(t), 0), int(n))

    def order(size: str | None) -> tuple[int, float]:
        parsed = parse_train_size(size)
        return images.get(size, -1), parsed.per_class or parsed.fraction or 0.0

    return max(sizes, key=order)
