"""Train/val/test: official splits when usable, else stratified carving that keeps every patient
(and every exact duplicate image) on one side, plus duplicate and patient-overlap checks."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from lightlayers.data.errors import DataError
from lightlayers.data.sources.base import SPLITS

__all__ = [
    "DEFAULT_PATIENT_PATTERN",
    "DEFAULT_TEST_FRACTION",
    "SplitPlan",
    "carve",
    "check_class_presence",
    "check_label_range",
    "group_images",
    "plan_splits",
]

# Patient ids in the Kermany chest X-ray file names: PNEUMONIA files are `personN_...`, NORMAL
# files `IM-NNNN-...` or `NORMAL2-IM-NNNN-...` (IM-NNNN names the patient, the numbers after
# it the image). `NORMAL2-` is a second numbering, not the same patients: in the archive no
# IM-NNNN (of either series) has images in both official train and test, yet 94 of the 328
# numbers used by both series do straddle train and test (as often as unrelated ids would),
# and an `IM-N` image looks no more like its `NORMAL2-IM-N` namesake than a random pair. So
# the prefix is kept in the id: `NORMAL2-IM-0381` and `IM-0381` are two patients.
DEFAULT_PATIENT_PATTERN = r"person(\d+)_|^((?:NORMAL2-)?IM-\d+)-"
# Test share carved when a source has no test split (and no resplit is asked for).
DEFAULT_TEST_FRACTION = 0.2
# A val split this small cannot rank checkpoints (the chest X-ray set ships 16 images).
TINY_VAL_IMAGES = 50
TINY_VAL_SHARE = 0.01


@dataclass
class SplitPlan:
    indices: dict[str, np.ndarray]  # split -> ascending indices into the decoded arrays
    notes: list[str] = field(default_factory=list)
    patients: dict[str, Any] | None = None
    duplicates: dict[str, int] = field(default_factory=dict)  # "a/b" -> distinct images in both
    duplicates_within: dict[str, int] = field(default_factory=dict)
    carved: tuple[str, ...] = ()  # splits carved here (the others are the source's own)


def patient_ids(ids: list[str], pattern: str) -> list[str | None]:
    """Patient id per file name: the first group that took part in the match (so a pattern
    may offer alternatives, one group each), or the whole match for a pattern without groups;
    None without a match."""
    rx = re.compile(pattern)
    out: list[str | None] = []
    for i in ids:
        m = rx.search(posixpath.basename(i))
        if m is None or not rx.groups:
            out.append(None if m is None else m.group(0))
        else:
            out.append(next((g for g in m.groups() if g is not None), None))
    return out


def group_images(patients: list[str | None] | None, digests: np.ndarray) -> np.ndarray:
    """Group number per image: images of one patient, and identical images, share a group
    (connected components; an image with neither is its own group)."""
    n = len(digests)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[tuple[str, object], int] = {}
    for i in range(n):
        keys: list[tuple[str, object]] = [("d", int(digests[i]))]
        if patients is not None and patients[i] is not None:
            keys.append(("p", patients[i]))
        for key in keys:
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[ri] = rj
    return np.array([find(i) for i in range(n)], np.int64)


def carve(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, carved) with ``fraction`` of each class's images carved, whole
    groups only (each group counts for its majority class). Rest keeps every class of ``idx``:
    a class with a single group stays entirely in rest, and a class whose every image lies in
    carved groups of other classes (one patient imaged under two labels) gets its smallest such
    group back."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups[idx], return_inverse=True)
    sizes = np.bincount(inv)
    per_class = np.zeros((len(uniq), int(labels.max()) + 1), np.int64)
    np.add.at(per_class, (inv, labels[idx]), 1)
    stratum = per_class.argmax(axis=1)
    take = np.zeros(len(uniq), bool)
    for c in np.unique(stratum):
        members = np.flatnonzero(stratum == c)
        target = max(1, round(fraction * int(sizes[members].sum())))
        got, taken = 0, 0
        for m in rng.permutation(members):
            if got >= target or taken == len(members) - 1:
                break
            # Take a group when that lands closer to the target than leaving it.
            if got + sizes[m] - target <= target - got:
                take[m] = True
                got += int(sizes[m])
                taken += 1
    # Returning a group to rest never empties a class there, so one pass restores them all.
    for c in np.flatnonzero(per_class.sum(axis=0)):
        holders = np.flatnonzero(per_class[:, c] > 0)
        if take[holders].all():
            take[holders[np.argmin(sizes[holders])]] = False
    carved = take[inv]
    return idx[~carved], idx[carved]


def _pairs(indices: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    return list(combinations([s for s in SPLITS if s in indices], 2))


def _duplicates(
    indices: dict[str, np.ndarray], digests: np.ndarray
) -> tuple[dict[str, int], dict[str, int]]:
    sets = {s: set(digests[i].tolist()) for s, i in indices.items()}
    across = {f"{a}/{b}": len(sets[a] & sets[b]) for a, b in _pairs(indices)}
    within = {s: len(i) - len(sets[s]) for s, i in indices.items()}
    return across, within


def _how(patients: list[str | None] | None, pattern: str | None) -> str:
    if patients is None:
        return "stratified (no file names, so no patient grouping)"
    if pattern is None:
        return "stratified, not grouped by patient (no patient pattern)"
    if not any(p is not None for p in patients):
        return f"stratified; no file name matches the patient pattern {pattern}, so ungrouped"
    return f"stratified, grouped by patient ({pattern})"


def plan_splits(
    labels: np.ndarray,
    split_codes: np.ndarray,
    digests: np.ndarray,
    ids: list[str] | None,
    val_fraction: float,
    seed: int,
    resplit: float | None,
    patient_pattern: str | None,
    known_patients: list[str | None] | None = None,
    patient_column: str | None = None,
) -> SplitPlan:
    """Decide the train/val/test indices (see the module docstring); record every decision.

    ``known_patients``: each image's patient as the source names it (a manifest's
    ``patient_column``), used instead of ``patient_pattern`` on the file names."""
    codes = np.asarray(split_codes)
    labels = np.asarray(labels)
    digests = np.asarray(digests)
    patients = None
    if known_patients is not None:
        patients = list(known_patients)
        patient_pattern = f"column {patient_column or 'patient'}"
    elif ids is not None:
        patients = patient_ids(ids, patient_pattern) if patient_pattern else [None] * len(ids)
    how = _how(patients, patient_pattern)
    groups: np.ndarray | None = None

    def cut(idx: np.ndarray, fraction: float, stream: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal groups
        if groups is None:
            groups = group_images(patients, digests)
        return carve(idx, labels, groups, fraction, [seed, stream])

    notes: list[str] = []
    carved: list[str] = []
    if resplit is not None:
        carved.append("test")
        train, test = cut(np.arange(len(labels)), resplit, 0)
        notes.append(
            f"re-split: all {len(labels)} images pooled (official splits ignored), "
            f"{round(100 * (1 - resplit))}/{round(100 * resplit)} train/test, {how}"
        )
        val = np.empty(0, np.int64)
    else:
        train = np.flatnonzero((codes == 0) | (codes == -1))
        val = np.flatnonzero(codes == 1)
        test = np.flatnonzero(codes == 2)
        if len(val) > 0 and (len(val) < TINY_VAL_IMAGES or len(val) < TINY_VAL_SHARE * len(train)):
            notes.append(
                f"official val split has only {len(val)} images (< {TINY_VAL_IMAGES} or "
                f"< {TINY_VAL_SHARE:.0%} of train): merged into train before carving val"
            )
            train, val = np.sort(np.concatenate([train, val])), np.empty(0, np.int64)
        if len(test) == 0:
            carved.append("test")
            train, test = cut(train, DEFAULT_TEST_FRACTION, 0)
            notes.append(
                f"no test split: test carved from train: {DEFAULT_TEST_FRACTION:.0%}, {how} "
                f"({len(test)} images)"
            )
    if len(val) == 0:
        carved.append("val")
        train, val = cut(train, val_fraction, 1)
        notes.append(f"val carved from train: {val_fraction:.0%}, {how} ({len(val)} images)")
    indices = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    across, within = _duplicates(indices, digests)
    if any(across.values()):
        shown = ", ".join(f"{k} {v}" for k, v in across.items() if v)
        notes.append(f"exact duplicate images across splits (distinct images in both): {shown}")

    patient_info: dict[str, Any] | None = None
    if patients is not None and patient_pattern and any(p is not None for p in patients):
        per_split = {s: {patients[i] for i in idx} - {None} for s, idx in indices.items()}
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        per_class: dict[str, list[int]] = {}
        for s, idx in indices.items():
            seen: list[set[str]] = [set() for _ in range(n_classes)]
            for i in idx:
                if patients[i] is not None:
                    seen[labels[i]].add(patients[i])
            per_class[s] = [len(x) for x in seen]
        patient_info = {
            "pattern": patient_pattern,
            "patients": len({p for p in patients if p is not None}),
            "images_with_id": sum(p is not None for p in patients),
            # Split -> distinct patients with images of each class (by label index).
            "per_split": per_class,
            "overlap": {f"{a}/{b}": len(per_split[a] & per_split[b]) for a, b in _pairs(indices)},
            # Pairs kept apart by the carving here (always 0); the others are as published.
            "carved_pairs": [f"{a}/{b}" for a, b in _pairs(indices)
                             if {a, b} & set(carved) and {a, b} <= {"train", *carved}],
        }
        shared = {k: v for k, v in patient_info["overlap"].items() if v}
        if shared:
            # Only splits we carved are grouped; published splits are kept as published.
            notes.append(
                "patient ids found in two splits: "
                + ", ".join(f"{k} {v}" for k, v in shared.items())
                + " (official splits are kept as published)"
            )
    return SplitPlan(
        indices=indices,
        notes=notes,
        patients=patient_info,
        duplicates=across,
        duplicates_within=within,
        carved=tuple(carved),
    )


def _names(classes: tuple[str, ...], which: np.ndarray) -> str:
    shown = [classes[int(c)] for c in which[:8]]
    return ", ".join(shown) + (f" (and {len(which) - 8} more)" if len(which) > 8 else "")


def check_label_range(
    labels: np.ndarray, split_codes: np.ndarray, classes: tuple[str, ...], where: str
) -> None:
    """Every label must index a declared class."""
    labels, codes = np.asarray(labels), np.asarray(split_codes)
    bad = (labels < 0) | (labels >= len(classes))
    if not bad.any():
        return
    per_split = ", ".join(
        f"{SPLITS[c] if c >= 0 else 'all'} {int((bad & (codes == c)).sum())}"
        for c in sorted(set(codes[bad].tolist()))
    )
    values = ", ".join(str(v) for v in np.unique(labels[bad])[:5])
    raise DataError(
        f"{where}: {int(bad.sum())} label(s) outside the {len(classes)} declared classes "
        f"(labels {values}; per split: {per_split}). Labels must be 0..{len(classes) - 1}, "
        "one per class name."
    )


def check_class_presence(
    labels: np.ndarray,
    indices: dict[str, np.ndarray],
    classes: tuple[str, ...],
    carved: tuple[str, ...],
    allow_missing: bool,
    where: str,
) -> tuple[dict[str, list[str]], list[str]]:
    """Every split must hold images, and every class must have images in train and in the
    source's own val and test splits.

    A class without training images cannot be learned (its test images are all counted wrong,
    and an empty class still gets an output unit); a class absent from an official val or test
    split has no score. ``allow_missing`` turns these errors into notes. A class absent from a
    split carved here (all its images are one patient or one group of duplicates) is a note.
    Returns the missing class names per split (only splits that miss some) and the notes.
    """
    labels = np.asarray(labels)
    empty_splits = [s for s, i in indices.items() if len(i) == 0]
    if empty_splits:
        # Too few images to carve from: every class kept all of its few images in train.
        raise DataError(
            f"{where}: the {' and '.join(empty_splits)} split(s) would hold no images "
            f"({len(labels)} images in all). Each class needs a few images per split; add "
            "images, or give the source its own val/test splits."
        )
    counts = {s: np.bincount(labels[i], minlength=len(classes)) for s, i in indices.items()}
    total = sum(counts.values())
    missing = {
        s: [classes[int(c)] for c in np.flatnonzero(n == 0)]
        for s, n in counts.items()
        if (n == 0).any()
    }

    def shown(which: np.ndarray) -> str:
        return "; ".join(
            f"{classes[int(c)]}: " + ", ".join(f"{s} {int(n[c])}" for s, n in counts.items())
            for c in which[:4]
        )

    problems: list[str] = []
    notes: list[str] = []
    empty = np.flatnonzero(total == 0)
    if len(empty):
        problems.append(
            f"class(es) {_names(classes, empty)} have no images in any split (train, val and "
            f"test all 0) out of {len(classes)} declared classes"
        )
    untrained = np.flatnonzero((counts["train"] == 0) & (total > 0))
    if len(untrained):
        problems.append(
            f"class(es) {_names(classes, untrained)} have no images in train, so a model could "
            f"never learn them (images per split: {shown(untrained)})"
        )
    for split in ("val", "test"):
        if split not in counts:
            continue
        absent = np.flatnonzero((counts[split] == 0) & (counts["train"] > 0))
        if not len(absent):
            continue
        text = (
            f"class(es) {_names(classes, absent)} have no images in {split} "
            f"(images per split: {shown(absent)})"
        )
        if split in carved:
            notes.append(f"{text}: they could not be carved (too few images, or all of them one "
                         "patient or duplicate group; train keeps at least one)")
        else:
            problems.append(text)
    if problems and not allow_missing:
        raise DataError(
            f"{where}: " + "; ".join(problems) + ". Fix the labels or the split folders, or "
            "pass allow_missing_classes=True (CLI: --allow-missing-classes) to keep them."
        )
    notes[:0] = [f"allowed by allow_missing_classes: {p}" for p in problems]
    return missing, notes
