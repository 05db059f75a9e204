"""Sources of decoded arrays: MedMNIST-style .npz, MNIST IDX files, scikit-learn digits."""

from __future__ import annotations

import gzip
import hashlib
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.data.errors import DataError
from lightlayers.data.registry import MEDMNIST_LABELS
from lightlayers.data.sources.base import SPLITS, ArraySet, Source, file_sha256
from lightlayers.data.sources.limits import Budget

__all__ = ["check_labels", "digits_source", "find_idx_files", "idx_source", "npz_source"]


# Labels are class indices; anything this large is an id or garbage, and would not fit a model.
_MAX_LABEL = 2**31 - 1


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
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            bad = labels[~whole][:3]
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
    # Checked before the cast: a uint64 or float label past int64 would wrap or saturate.
    if n and labels.max() > _MAX_LABEL:
        raise DataError(
            f"{where}: label {labels.max()} is far too large for a class index; labels must be "
            "class indices 0, 1, 2, ..."
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
        nan = ""
        if images.dtype.kind in "fc" and images.size and np.isnan(images).any():
            nan = f", {int(np.isnan(images).sum()):,} of them NaN"
        raise DataError(
            f"{where}: images have dtype {images.dtype}{nan}; expected uint8 pixel values 0-255 "
            "(convert with np.clip(x, 0, 255).astype(np.uint8) after scaling)."
        )
    if len(images) == 0:
        raise DataError(
            f"{where}: holds 0 images; add images (an empty val or test split: leave out its "
            "images and labels instead, and it is carved from train)."
        )
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{where}: images have shape {images.shape}; an image needs pixels.")
    return images


def _check_same_shape(splits: dict[str | None, tuple[np.ndarray, np.ndarray]], where: str) -> None:
    shapes = {str(s): im.shape[1:] for s, (im, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{s} {shape}" for s, shape in shapes.items())
        raise DataError(
            f"{where}: the splits' images differ in shape ({shown}); every split needs images of "
            "one size."
        )


def _class_names(
    splits: dict[str | None, tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...] | None,
    where: str,
) -> tuple[str, ...]:
    """Class names, checking the labels against them. Without names, classes are "0".."max";
    a label beyond the number of images is an error. Empty classes (gaps) are refused later,
    where every source's labels are checked (dataset.py), unless they are allowed there."""
    if not any(len(y) for _, y in splits.values()):
        raise DataError(f"{where}: holds no images; a dataset needs images of at least 2 classes.")
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


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """One .npy member, its header checked against its size (itself checked against the limits)
    before the data is read."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{where}: .npy format version {version} is not supported.")
        if dtype.hasobject:
            raise DataError(
                f"{where}: holds Python objects (dtype {dtype}); give plain numeric arrays."
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise DataError(
                f"{where}: the header says {shape} {dtype} ({nbytes:,} bytes) but "
                f"{info.file_size - f.tell():,} bytes follow it; the file is truncated or damaged."
            )
        out = _spooled(f, nbytes, where)
    return out.view(dtype).reshape(shape, order="F" if fortran else "C")


def _spooled(f: Any, nbytes: int, where: str) -> np.ndarray:
    """The next ``nbytes`` of ``f``, copied in chunks into an unnamed temporary file in the
    cache folder and memory-mapped read-only from it: an array, decompressed, takes page cache
    that the kernel can drop, not private memory (a 100k-image .npz is gigabytes). The file
    has no name from the start; its space returns to the disk when the array is released."""
    import tempfile

    from lightlayers.data.cache import cache_root

    if nbytes == 0:  # nothing to map (an empty file cannot be)
        if f.read(1):
            raise DataError(f"{where}: the array data is truncated or damaged; copy the file "
                            "again.")
        return np.empty(0, np.uint8)
    root = cache_root()

    def cannot_write(e: OSError) -> DataError:
        return DataError(f"{where}: cannot write a temporary file in the cache folder {root} "
                         f"({e.strerror or e}); point LIGHTLAYERS_CACHE at a writable folder "
                         "with room for the decompressed arrays.")

    try:
        root.mkdir(parents=True, exist_ok=True)
        spool = tempfile.TemporaryFile(dir=root, prefix=".array-")  # noqa: SIM115
    except OSError as e:
        raise cannot_write(e) from e
    with spool:
        got = 0
        while got < nbytes and (chunk := f.read(min(1 << 20, nbytes - got))):
            try:
                spool.write(chunk)
            except OSError as e:  # a full disk
                raise cannot_write(e) from e
            got += len(chunk)
        if got != nbytes or f.read(1):
            raise DataError(
                f"{where}: the array data is truncated or damaged; copy the file again."
            )
        try:
            spool.flush()
        except OSError as e:
            raise cannot_write(e) from e
        # The map keeps its own handle on the file: closing the spool here is safe.
        return np.asarray(np.memmap(spool, dtype=np.uint8, mode="r", shape=(nbytes,)))


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, with the archive limits applied (a .npz is a zip, so it can be a
    decompression bomb like any zip)."""
    budget = Budget(str(path))
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                budget.member(info.filename, info.file_size)  # every header before any data
            for info in infos:
                if info.is_dir():
                    continue
                key = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or key in arrays:
                    raise DataError(
                        f"{path}: member {info.filename!r} is not a numpy array (.npy) or is "
                        "repeated; a .npz holds one .npy file per array (np.savez)."
                    )
                arrays[key] = _read_npy(zf, info, f"{path} [{key}]")
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as e:
        raise DataError(
            f"{path}: cannot read the .npz file ({type(e).__name__}: {e}). Check that it is a "
            "complete numpy .npz archive of plain arrays (np.savez or np.savez_compressed)."
        ) from e
    return arrays


def read_npz(path: Path, classes: tuple[str, ...] | None = None) -> ArraySet:
    """A MedMNIST-style .npz: ``{train,val,test}_images`` and ``_labels``; train is required,
    val and test may be absent (they are then carved from train)."""
    arrays = _npz_arrays(path)
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
    _check_same_shape(splits, str(path))
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
    """An IDX file of uint8 (raw or .gz). The header is read first and its size checked against
    the limits, so a small .gz cannot unpack to gigabytes."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim or header[:3] != b"\0\0\x08" or header[3] != ndim:
                raise DataError(
                    f"{path}: not an IDX file of uint8 with {ndim} dimension(s) (header "
                    f"{header[:4].hex()}, expected 000008{ndim:02x})."
                )
            dims = tuple(int(d) for d in np.frombuffer(header, ">u4", count=ndim, offset=4))
            n = math.prod(dims)
            Budget(str(path)).member(path.name, n)
            # Images are mapped from a temporary file (see _spooled), labels read as they are.
            data = (_spooled(f, n, f"{path} (header: {dims} values)") if ndim > 1
                    else np.frombuffer(_read_exactly(f, n, path, dims), np.uint8))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged file or gzip data ({e}); copy the file again.") from e
    return data.reshape(dims)


def _read_exactly(f: Any, n: int, path: Path, dims: tuple[int, ...]) -> bytes:
    data, extra = f.read(n), f.read(1)
    if len(data) != n or extra:
        raise DataError(
            f"{path}: header says {dims} values but the file holds "
            f"{'more than ' if extra else ''}{len(data)} bytes; it is truncated or damaged."
        )
    return bytes(data)


def idx_source(folder: Path, files: dict[str, tuple[Path, Path]]) -> Source:
    h = hashlib.sha256()
    for split in sorted(files):
        for p in files[split]:
            h.update(f"{split}\t{p.name}\t{file_sha256(p)}\n".encode())

    def read() -> ArraySet:
        splits: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        for split, (ipath, lpath) in files.items():
            images = _check_images(_read_idx(ipath, 3), str(ipath))
            labels = check_labels(_read_idx(lpath, 1), len(images), str(lpath))
            splits[split] = (images, labels)
        _check_same_shape(splits, str(folder))
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
