"""Property-based fuzzing of every reader of user files: .npz, MNIST IDX, zip/tar archives of
image folders, and the YAML study config. Whatever the bytes, the answer is a correct dataset
(or config) or one clear DataError (ConfigError) that names the file; never another exception,
a hang, or a dataset that breaks the rules a trainer relies on."""

from __future__ import annotations

import gzip
import io
import math
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from data_fixtures import image_bytes
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from lightlayers.config import ConfigError, StudyConfig, load_config
from lightlayers.data import DataError, Dataset, load_dataset

FUZZ = fuzz(100)


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d).resolve()


def _check_dataset(ds: Dataset) -> None:
    """What a trainer relies on: three non-empty splits of uint8 (N, C, H, W) images of one size,
    int64 labels inside the classes, at least two classes, every class present in train."""
    assert set(ds.splits) == {"train", "val", "test"} and ds.num_classes >= 2
    shapes = {s.images.shape[1:] for s in ds.splits.values()}
    assert len(shapes) == 1 and next(iter(shapes))[0] in (1, 3)
    for split in ds.splits.values():
        assert len(split) >= 1 and split.images.dtype == np.uint8 and split.images.ndim == 4
        assert split.labels.dtype == np.int64 and len(split.images) == len(split.labels)
        assert split.labels.min() >= 0 and split.labels.max() < ds.num_classes
    assert (np.bincount(ds.splits["train"].labels, minlength=ds.num_classes) > 0).all()


def _load(path: Path) -> Dataset | DataError:
    """load_dataset, with the property: a valid dataset, or a DataError naming ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicates and skipped images warn; fine here
            ds = load_dataset(path, progress=False)
    except DataError as e:
        assert str(e).strip() and str(path) in str(e), str(e)
        return e
    _check_dataset(ds)
    return ds


# --- .npz --------------------------------------------------------------------------------------

_DTYPES = [np.uint8] * 6 + [np.int64, np.float32, np.float64, np.bool_, np.int8, np.uint64]


def _maybe(draw: st.DrawFn, wild: bool, strategy: st.SearchStrategy[Any], tame: Any) -> Any:
    """A drawn value when ``wild``, else the well-formed ``tame`` one: about half of all
    examples are plausible datasets, so the success path is fuzzed too."""
    return draw(strategy) if wild else tame


@st.composite
def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    wild = draw(st.booleans())
    h = _maybe(draw, wild, st.integers(0, 5), draw(st.integers(2, 5)))
    w = draw(st.integers(1, 5)) if wild else draw(st.integers(2, 5))
    tail = draw(st.sampled_from([(), (), (1,), (3,), *([(4,)] if wild else [])]))
    classes = _maybe(draw, wild, st.sampled_from([1, 2, 2, 3, 8]), draw(st.integers(2, 3)))
    out: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        if split != "train" and draw(st.booleans()):
            continue
        least = (6 if split == "train" else 2) * classes
        n = _maybe(draw, wild, st.integers(0, 30), draw(st.integers(least, least + 20)))
        dtype = _maybe(draw, wild, st.sampled_from(_DTYPES), np.uint8)
        images = rng.integers(0, 256, (n, h, w, *tail)).astype(dtype)
        if dtype in (np.float32, np.float64) and images.size and draw(st.booleans()):
            images.flat[0] = np.nan
        n_labels = n + _maybe(draw, wild, st.sampled_from([0, 0, 0, -1, 1]), 0)
        labels = rng.permutation(max(0, n_labels)) % classes
        labels = labels.astype(np.float64)
        if wild and len(labels) and draw(st.integers(0, 3)) == 0:
            labels[0] = draw(st.sampled_from([-1, 7, 10**6, 2**64 - 1, 0.5, np.nan]))
        dtype = draw(st.sampled_from([np.int64, np.uint8, np.float64, np.uint64]))
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore")
            cast = labels.astype(dtype)
        # Stored in the drawn dtype when it holds the values (NaN, -1 in uint8 stay float).
        labels = cast if np.array_equal(cast, labels) else labels
        if draw(st.integers(0, 5)) == 0:
            labels = labels.reshape(-1, 1)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    drop = _maybe(draw, wild, st.sampled_from([None, None, *out]), None)
    if drop is not None:
        del out[drop]
    return out


@FUZZ
@given(npz_arrays())
def test_fuzz_npz_arrays(arrays: dict[str, np.ndarray]) -> None:
    with _folder() as d:
        np.savez(d / "fuzz.npz", **arrays)
        _load(d / "fuzz.npz")


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Truncate, overwrite or insert bytes at drawn places."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "set", "insert"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "cut":
            del buf[at:]
        elif kind == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        else:
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


def _valid_npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8),
        train_labels=np.arange(40) % 2,
        test_images=rng.integers(0, 256, (10, 6, 6), dtype=np.uint8),
        test_labels=np.arange(10) % 2,
    )
    return buf.getvalue()


@FUZZ
@given(st.data())
def test_fuzz_npz_bytes(data: st.DataObject) -> None:
    with _folder() as d:
        (d / "fuzz.npz").write_bytes(_mutate(_valid_npz(), data.draw))
        _load(d / "fuzz.npz")


# --- MNIST IDX ---------------------------------------------------------------------------------


@st.composite
def idx_file(draw: st.DrawFn, ndim: int, n: int, hw: list[int], classes: int, wild: bool) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dims = [n] if ndim == 1 else [n, *hw]
    magic = bytearray([0, 0, 8, ndim])
    if wild and draw(st.integers(0, 5)) == 0:
        magic[draw(st.integers(0, 3))] = draw(st.integers(0, 255))
    if wild and draw(st.integers(0, 5)) == 0:
        dims[0] = draw(st.sampled_from([n + 1, max(0, n - 1), 2**32 - 1]))
    # The data always holds n items, whatever the header claims.
    values = rng.permutation(n) % classes
    if ndim == 3:
        values = rng.integers(0, 256, n * math.prod(hw))
    body = bytes(magic) + b"".join(d.to_bytes(4, "big") for d in dims)
    body += values.astype(np.uint8).tobytes()
    if wild and draw(st.integers(0, 5)) == 0:
        body = _mutate(body, draw)
    return gzip.compress(body) if draw(st.booleans()) else body


@st.composite
def idx_folder(draw: st.DrawFn) -> dict[str, bytes]:
    wild = draw(st.booleans())
    classes = _maybe(draw, wild, st.sampled_from([1, 2, 3, 10]), draw(st.integers(2, 3)))
    hw = [draw(st.integers(2, 5)), draw(st.integers(2, 5))]
    files = {}
    for stem in ("train", "t10k"):
        least = (6 if stem == "train" else 2) * classes
        n = _maybe(draw, wild, st.integers(0, 30), draw(st.integers(least, least + 20)))
        shape = _maybe(draw, wild, st.lists(st.integers(0, 5), min_size=2, max_size=2), hw)
        files[f"{stem}-images-idx3-ubyte"] = draw(idx_file(3, n, shape, classes, wild))
        files[f"{stem}-labels-idx1-ubyte"] = draw(idx_file(1, n, hw, classes, wild))
    return files


@FUZZ
@given(idx_folder())
def test_fuzz_idx(files: dict[str, bytes]) -> None:
    with _folder() as d:
        for name, data in files.items():
            (d / (name + (".gz" if data[:2] == b"\x1f\x8b" else ""))).write_bytes(data)
        _load(d)


# --- zip and tar archives -----------------------------------------------------------------------

_PARTS = ["train", "test", "val", "a", "b", "c", "..", ".", "__MACOSX", ".hidden", "x", "y"]
_LEAVES = ["0.png", "1.png", "2.jpg", "3.png", "4.png", "notes.txt", "..", ".DS_Store"]


@st.composite
def member(draw: st.DrawFn) -> tuple[str, bytes | None]:
    parts = draw(st.lists(st.sampled_from(_PARTS), max_size=3))
    name = "/".join([*parts, draw(st.sampled_from(_LEAVES))])
    name = draw(st.sampled_from(["", "", "", "", "./", "/"])) + name
    kind = draw(st.sampled_from(["image"] * 5 + ["garbage", "empty", "dir"]))
    if kind == "dir":
        return name.rsplit("/", 1)[0] + "/" if "/" in name else name + "/", None
    if kind == "image":
        return name, image_bytes(draw(st.integers(0, 10**6)), size=(6, 6))
    return name, b"" if kind == "empty" else draw(st.binary(max_size=64))


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _write_archive(path: Path, members: list[tuple[str, bytes | None]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names
        if path.suffix == ".zip":
            with zipfile.ZipFile(path, "w") as zf:
                for name, data in members:
                    zf.writestr(name, b"" if data is None else data)
            return
        with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name.rstrip("/") or ".")
                if data is None:
                    info.type = tarfile.DIRTYPE
                    tf.addfile(info)
                else:
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))


@st.composite
def archive_members(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    """A plausible image tree (split folders or not, under a wrapping folder or not, with
    non-image clutter), plus, in half the examples, wild members."""
    top = draw(st.sampled_from(["", "data/"]))
    splits = draw(st.sampled_from([[""], ["train/", "test/"], ["train/", "val/", "test/"]]))
    classes = draw(st.sampled_from(["ab", "abc"]))
    members: list[tuple[str, bytes | None]] = []
    seed = draw(st.integers(0, 10**6))
    for split in splits:
        for c in classes:
            n = 8 if split in ("", "train/") else draw(st.integers(2, 6))
            for i in range(n):
                seed += 1
                members.append((f"{top}{split}{c}/{i}.png", image_bytes(seed, size=(6, 6))))
    clutter = [(f"{top}notes.txt", b"x"), ("__MACOSX/._a.png", b"x"), (f"{top}.DS_Store", b"")]
    members += draw(st.lists(st.sampled_from(clutter), max_size=2))
    if draw(st.booleans()):
        members += draw(st.lists(member(), min_size=1, max_size=6))
    return draw(st.permutations(members))


@FUZZ
@given(archive_members(), st.sampled_from(["fuzz.zip", "fuzz.tar.gz", "fuzz.tar"]))
def test_fuzz_archive_members(members: list[tuple[str, bytes | None]], name: str) -> None:
    with _folder() as d:
        _write_archive(d / name, members)
        result = _load(d / name)
    unsafe = [m for m, _ in members if _unsafe(m)]
    if unsafe:  # never silently dropped or turned into a class
        assert isinstance(result, DataError) and "member" in str(result), result


def _valid_archive(name: str) -> bytes:
    members = [(f"{c}/{i}.png", image_bytes(i + 50 * (c == "b"), size=(6, 6))) for c in "ab"
               for i in range(12)]  # fmt: skip
    with _folder() as d:
        _write_archive(d / name, members)  # type: ignore[arg-type]
        return (d / name).read_bytes()


@FUZZ
@given(st.data(), st.sampled_from(["fuzz.zip", "fuzz.tar.gz", "fuzz.tar"]))
def test_fuzz_archive_bytes(data: st.DataObject, name: str) -> None:
    with _folder() as d:
        (d / name).write_bytes(_mutate(_valid_archive(name), data.draw))
        _load(d / name)


# --- YAML study config ---------------------------------------------------------------------------

_KEYS = [f for f in StudyConfig.__dataclass_fields__] + ["nonsense", "augment", "epochs"]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["study-light-k1", "study-conv", "digits", "seed", "improved", "1e-3", "cpu"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=8,
)
# Scalars YAML itself turns into values a config never expects.
_TRICKY = [
    "2001-12-14t21:59:43.10-05:00",
    "2001-02-03",
    "!!binary aGVsbG8=",
    "!!int 12",
    "&a [*a]",
    "*undefined",
    "{a: 1, a: 2}",
    "<<: {epochs: 1}",
    "[1, [2, [3]]]",
    "0o777",
    ".nan",
    "~",
]


@st.composite
def yaml_text(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["dump", "dump", "lines", "text"]))
    if kind == "dump":
        doc = draw(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5))
        return yaml.safe_dump(doc, allow_unicode=True).encode()
    if kind == "lines":
        lines = [
            f"{draw(st.sampled_from(_KEYS))}: {draw(st.sampled_from(_TRICKY))}"
            for _ in range(draw(st.integers(1, 3)))
        ]
        return "\n".join(lines).encode()
    return draw(st.text(max_size=80)).encode()


def _load_config(path: Path) -> StudyConfig | ConfigError:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e).strip()
        return e
    assert isinstance(cfg, StudyConfig)
    return cfg


@FUZZ
@given(yaml_text())
def test_fuzz_yaml_config(text: bytes) -> None:
    with _folder() as d:
        (d / "study.yaml").write_bytes(text)
        _load_config(d / "study.yaml")


# Inputs on which the fuzzer once found load_config raising something other than ConfigError:
# PyYAML's own ValueErrors (impossible dates, bad !!int/!!float), a file that is not UTF-8, and
# keys that are not strings.
YAML_FOUND = [
    pytest.param(b"size: 2001-02-30\n", id="impossible-date"),
    pytest.param(b"epochs: !!int 0x\n", id="bad-int-tag"),
    pytest.param(b"lr: !!float abc\n", id="bad-float-tag"),
    pytest.param(b"data: \xff\xfe digits\n", id="not-utf8"),
    pytest.param(b"{1: 2, data: digits}\n", id="int-key"),
    pytest.param(b"model_options: {1: {}}\n", id="int-model-name"),
    pytest.param(b"models: [[1]]\n", id="nested-list"),
    pytest.param(b"\x00\x01", id="control-bytes"),
]


@pytest.mark.parametrize("text", YAML_FOUND)
def test_yaml_inputs_found_by_fuzzing(text: bytes, tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_bytes(text)
    assert isinstance(_load_config(tmp_path / "study.yaml"), ConfigError)
