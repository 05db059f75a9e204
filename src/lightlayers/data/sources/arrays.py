"""Sources of decoded arrays: MedMNIST-style .npz, MNIST IDX files, scikit-learn digits."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from lightlayers.data.errors import DataError
from lightlayers.data.registry import MEDMNIST_LABELS
from lightlayers.data.sources.base import SPLITS, ArraySet, Source, file_sha256

__all__ = ["check_labels", "digits_source", "find_idx_files", "idx_source", "npz_source"]


def check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """Integer class indices >= 0 as int64 (N,); (N, 1) is accepted (MedMNIST stores that)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {labels.shape}; expected (N,) or (N, 1) class indices "
            "(multi-label targets are not supported)."
        )
    if len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} images; they must match.")
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))][:3]
            raise DataError(
                f"{where}: non-integer labels (e.g. {', '.join(map(str, bad))}); labels must be "
                "class indices 0, 1, 2, ..."
            )
    elif labels.dtype.kind not in "iub":
        raise DataError(
            f"{where}: labels have dtype {labels.dtype}; expected integer class indices."
        )
    if n and labels.min() < 0:
        raise DataError(
            f"{where}: negative label {labels.min()}; labels must be class indices 0, 1, 2, ..."
        )
    return labels.astype(np.int64)


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(
            f"{where}: images have shape {images.shape}; expected (N, H, W) grayscale or "
            "(N, H, W, 3) RGB."
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"{where}: images have dtype {images.dtype}; expected uint8 pixel values 0-255."
        )
    return images


def _class_names(
    splits: dict[str | None, tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...] | None,
    where: str,
) -> tuple[str, ...]:
    """Class names, checking the labels against them. Without names, classes are "0".."max";
    gaps are allowed (a class may be absent), a label beyond the number of images is not."""
    max_label = max(int(y.max()) for _, y in splits.values() if len(y))
    n_images = sum(len(y) for _, y in splits.values())
    if classes is not None:
        if max_label >= len(classes):
            raise DataError(
                f"{where}: label {max_label} is out of range for the {len(classes)} classes "
                f"{', '.join(classes)}."
            )
        return classes
    if max_label + 1 > n_images:
        raise DataError(
            f"{where}: labels go up to {max_label} for only {n_images} images; they look like "
            "ids, not class indices 0, 1, 2, ..."
        )
    if max_label < 1:
        raise DataError(f"{where}: all labels are {max_label}; a dataset needs at least 2 classes.")
    return tuple(str(i) for i in range(max_label + 1))


def read_npz(path: Path, classes: tuple[str, ...] | None = None) -> ArraySet:
    """A MedMNIST-style .npz: ``{train,val,test}_images`` and ``_labels``; train is required,
    val and test may be absent (they are then carved from train)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{path}: cannot read the .npz file ({type(e).__name__}: {e}). Check that it is a "
            "complete numpy .npz archive of plain arrays."
        ) from e
    expected = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    found = ", ".join(sorted(arrays)) or "none"
    missing = [k for k in ("train_images", "train_labels") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} (found: {found}). A MedMNIST-style .npz "
            f"holds {', '.join(expected)}; train is required."
        )
    splits: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        ik, lk = f"{split}_images", f"{split}_labels"
        if (ik in arrays) != (lk in arrays):
            have, lack = (ik, lk) if ik in arrays else (lk, ik)
            raise DataError(
                f"{path}: has {have} but no {lack} (found: {found}); add both or neither."
            )
        if ik in arrays:
            images = _check_images(arrays[ik], f"{path} [{ik}]")
            labels = check_labels(arrays[lk], len(images), f"{path} [{lk}]")
            splits[split] = (images, labels)
    shapes = {im.shape[1:] for im, _ in splits.values()}
    if len(shapes) > 1:
        raise DataError(f"{path}: the splits' images differ in shape ({sorted(shapes)}).")
    if classes is None:
        flag = path.name.split("_")[0].split(".")[0].lower()
        classes = MEDMNIST_LABELS.get(flag)
    names = _class_names(splits, classes, str(path))
    notes = [f"no {s} split in the file" for s in SPLITS if s not in splits]
    return ArraySet(classes=names, splits=splits, notes=notes)


def npz_source(path: Path) -> Source:
    return Source(
        name=path.name.removesuffix(".npz"),
        location=str(path),
        kind="npz",
        identity={"kind": "npz", "sha256": file_sha256(path)},
        read=lambda: read_npz(path),
    )


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_one(folder: Path, stem: str) -> Path | None:
    # Official names, their .gz, and the common "train-images.idx3-ubyte" spelling.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files of an MNIST-style folder, or None when it is not one."""
    if _find_one(folder, _IDX_STEMS["train"][0]) is None:
        return None
    found: dict[str, tuple[Path, Path]] = {}
    for split, stems in _IDX_STEMS.items():
        paths = [_find_one(folder, s) for s in stems]
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        if missing:
            raise DataError(
                f"{folder}: MNIST-style IDX folder without {', '.join(missing)}(.gz). It needs "
                f"{', '.join(s for ss in _IDX_STEMS.values() for s in ss)} (each raw or .gz)."
            )
        found[split] = (paths[0], paths[1])  # type: ignore[assignment]
    return found


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: damaged gzip data ({e}); copy the file again.") from e
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(
            f"{path}: not an IDX file of uint8 with {ndim} dimension(s) (header {raw[:4].hex()}, "
            f"expected 000008{ndim:02x})."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(
            f"{path}: header says {dims} values but the file holds {len(raw) - offset} bytes; "
            "it is truncated or damaged."
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def idx_source(folder: Path, files: dict[str, tuple[Path, Path]]) -> Source:
    h = hashlib.sha256()
    for split in sorted(files):
        for p in files[split]:
            h.update(f"{split}\t{p.name}\t{file_sha256(p)}\n".encode())

    def read() -> ArraySet:
        splits: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        for split, (ipath, lpath) in files.items():
            images = _read_idx(ipath, 3)
            labels = check_labels(_read_idx(lpath, 1), len(images), str(lpath))
            splits[split] = (images, labels)
        return ArraySet(
            classes=_class_names(splits, None, str(folder)),
            splits=splits,
            notes=["no val split in the IDX files"],
        )

    return Source(
        name=folder.name,
        location=str(folder),
        kind="idx",
        identity={"kind": "idx", "sha256": h.hexdigest()},
        read=read,
    )


def digits_source() -> Source:
    def read() -> ArraySet:
        from sklearn.datasets import load_digits  # only here: sklearn is slow to import

        d = load_digits()
        # 0..16 counts of a 4x4 block -> 0..255 grey values.
        images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
        return ArraySet(
            classes=tuple(str(i) for i in range(10)),
            splits={None: (images, d.target.astype(np.int64))},
            notes=["scikit-learn digits have no official splits"],
        )

    return Source(
        name="digits",
        location="digits",
        kind="digits",
        identity={"kind": "digits", "dataset": "sklearn.datasets.load_digits"},
        read=read,
    )
