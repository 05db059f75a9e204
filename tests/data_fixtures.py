"""Helpers for the data tests: where the shared data lives, and small image trees built with PIL.

Not a conftest: the data test modules import what they need from here.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CHEST_TAR = SHARED / "chest_xray_pneumonia" / "chest_xray_224.tar.gz"
PNEUMONIA_NPZ = SHARED / "chest_xray_pneumonia" / "pneumoniamnist_28_reconstructed.npz"
MNIST_DIR = SHARED / "mnist"

needs_shared = pytest.mark.skipif(
    not CHEST_TAR.exists(), reason="../shared/data is not next to the repository"
)


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole test session, so expensive decodes happen once."""
    path = tmp_path_factory.getbasetemp() / "lightlayers-cache"
    path.mkdir(exist_ok=True)
    return path


def image_bytes(
    seed: int, size: tuple[int, int] = (20, 20), mode: str = "L", fmt: str = "PNG"
) -> bytes:
    """A distinct random image (content depends on ``seed``), encoded."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None)
    if im.mode != mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_tree(
    root: Path, counts: dict[str, int], name: str = "img{i}.png", **kw: object
) -> list[Path]:
    """Write ``counts`` images: {"train/cat": 5, "test/dog": 3} -> root/train/cat/img0.png ...
    Every image has distinct content (seeded by a running number)."""
    written = []
    n = 0
    for folder, k in counts.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            p = d / name.format(i=i, n=n)
            p.write_bytes(image_bytes(1000 + n, **kw))  # type: ignore[arg-type]
            written.append(p)
            n += 1
    return written


def pack(root: Path, archive: Path, arcname: str | None = None) -> Path:
    """Pack the tree at ``root`` into a .tar.gz/.tgz/.tar/.zip named ``archive``."""
    top = arcname if arcname is not None else root.name
    files = sorted(p for p in root.rglob("*"))
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            for p in files:
                name = f"{top}/{p.relative_to(root).as_posix()}".lstrip("/")
                zf.write(p, name + ("/" if p.is_dir() else ""))
    else:
        mode = "w:gz" if archive.name.endswith(("gz", ".tgz")) else "w"
        with tarfile.open(archive, mode) as tf:
            for p in files:
                tf.add(p, f"{top}/{p.relative_to(root).as_posix()}".lstrip("/"), recursive=False)
    return archive


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def small_npz_arrays(
    n: dict[str, int], shape: tuple[int, ...] = (12, 12), classes: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """MedMNIST-style arrays with every class present in every split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in n.items():
        out[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(k) % classes).reshape(-1, 1).astype(np.uint8)
    return out


def pneumonia_subset(
    path: Path, train: int = 400, val: int = 100, test: int = 200
) -> Path:
    """The first ``train``/``val``/``test`` chest X-rays of each split of the real
    PneumoniaMNIST file (both classes in each), in the same keys, shapes and dtypes: the
    official splits, small enough that a study on them trains in seconds. A file name starting
    with ``pneumoniamnist_`` gets the class names normal and pneumonia, as the real file."""
    with np.load(PNEUMONIA_NPZ) as z:
        arrays = {f"{split}_{kind}": z[f"{split}_{kind}"][:n]
                  for split, n in (("train", train), ("val", val), ("test", test))
                  for kind in ("images", "labels")}
    return save_npz(path, **arrays)
