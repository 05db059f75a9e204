"""Malformed and hostile data: every case ends in one clear line from ``lightlayers data summary``
(exit code 2, the file named, no traceback), never a hang, a blown memory or a wrong dataset."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import CHEST_TAR, image_bytes, needs_shared, pack, save_npz, write_tree
from procs import alive, children

from lightlayers.cli import main
from lightlayers.data import DataError, load_dataset
from lightlayers.data.sources.limits import Budget, Limits


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))


def _summary(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["data", "summary", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- builders: each writes one malformed input below ``d`` and returns its path --------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _images(n: int, prefix: str) -> dict[str, bytes]:
    return {
        f"{prefix}{c}/{i}.png": image_bytes(i + 100 * (c == "b")) for c in "ab" for i in range(n)
    }


def absolute_zip_member(d: Path) -> Path:
    return _zip(d / "abs.zip", {**_images(3, "data/"), "/etc/a/evil.png": image_bytes(9)})


def dotdot_zip_member(d: Path) -> Path:
    return _zip(d / "dots.zip", {**_images(3, "data/"), "data/../../a/evil.png": image_bytes(9)})


def dotdot_tar_member(d: Path) -> Path:
    return _tar(d / "dots.tar.gz", {**_images(3, "data/"), "../b/evil.png": image_bytes(9)})


def absolute_tar_member(d: Path) -> Path:
    return _tar(d / "abs.tar.gz", {"/a/x.png": image_bytes(1), **_images(3, "")})


def tar_header_claims_2_gib(d: Path) -> Path:
    """A tar whose first member declares 2 GiB but holds 1 KiB: refused from the header."""
    info = tarfile.TarInfo("data/a/huge.png")
    info.size = 2 * 2**30
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)
    path = d / "claims.tar.gz"
    path.write_bytes(gzip.compress(raw))
    return path


def zip_with_encrypted_member(d: Path) -> Path:
    """A zip whose members are flagged encrypted (bit 0 of the general purpose flags, set in
    the local and central headers; the bytes stay plain, the flag is what a reader sees)."""
    raw = bytearray(_zip(d / "locked.zip", _images(3, "")).read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.find(sig)
        while i >= 0:
            raw[i + at] |= 0x1
            i = raw.find(sig, i + 4)
    (d / "locked.zip").write_bytes(raw)
    return d / "locked.zip"


def empty_zip(d: Path) -> Path:
    return _zip(d / "empty.zip", {})


def garbage_tar(d: Path) -> Path:
    path = d / "garbage.tar.gz"
    path.write_bytes(gzip.compress(b"\x01" * 3000))
    return path


def _npz(d: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    return save_npz(d / name, **arrays)


def _imgs(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def npz_test_class_unseen_in_train(d: Path) -> Path:
    return _npz(
        d,
        train_images=_imgs(40),
        train_labels=np.arange(40) % 2,
        test_images=_imgs(12),
        test_labels=np.arange(12) % 3,  # class 2 only in test
    )


def npz_one_stray_label(d: Path) -> Path:
    labels = np.arange(60) % 2
    labels[5] = 7  # 0/1 plus one 7: classes 2..6 would be empty
    return _npz(d, train_images=_imgs(60), train_labels=labels)


def npz_test_lacks_a_class(d: Path) -> Path:
    return _npz(
        d,
        train_images=_imgs(40),
        train_labels=np.arange(40) % 2,
        test_images=_imgs(10),
        test_labels=np.zeros(10, np.int64),
    )


def npz_zero_images(d: Path) -> Path:
    return _npz(d, train_images=np.zeros((0, 8, 8), np.uint8), train_labels=np.zeros(0, np.int64))


def npz_empty_test_split(d: Path) -> Path:
    return _npz(
        d,
        train_images=_imgs(40),
        train_labels=np.arange(40) % 2,
        test_images=np.zeros((0, 8, 8), np.uint8),
        test_labels=np.zeros(0, np.int64),
    )


def npz_missing_key(d: Path) -> Path:
    return _npz(d, train_images=_imgs(40), labels=np.arange(40) % 2)


def npz_float_images(d: Path) -> Path:
    return _npz(d, train_images=_imgs(40) / 255.0, train_labels=np.arange(40) % 2)


def npz_nan_images(d: Path) -> Path:
    images = _imgs(40).astype(np.float32)
    images[3, 2, 2] = np.nan
    return _npz(d, train_images=images, train_labels=np.arange(40) % 2)


def npz_flat_images(d: Path) -> Path:
    return _npz(d, train_images=_imgs(40).reshape(40, 64), train_labels=np.arange(40) % 2)


def npz_huge_labels(d: Path) -> Path:
    labels = (np.arange(40) % 2).astype(np.uint64)
    labels[0] = np.iinfo(np.uint64).max  # would wrap to -1 as int64
    return _npz(d, train_images=_imgs(40), train_labels=labels)


def npz_string_labels(d: Path) -> Path:
    return _npz(d, train_images=_imgs(4), train_labels=np.array(["a", "b", "a", "b"]))


def npz_object_array(d: Path) -> Path:
    path = d / "d.npz"
    np.savez(path, train_images=np.array([{"x": 1}], dtype=object), train_labels=np.zeros(1))
    return path


def npz_garbage_bytes(d: Path) -> Path:
    path = d / "d.npz"
    path.write_bytes(os.urandom(500))
    return path


def npz_member_not_npy(d: Path) -> Path:
    return _zip(d / "d.npz", {"train_images": b"not an array", "train_labels.npy": b"x"})


def npz_header_lies(d: Path) -> Path:
    """A .npy whose header promises 10^12 bytes: refused before anything is allocated."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1000, 1000)}
    )
    return _zip(d / "d.npz", {"train_images.npy": buf.getvalue() + bytes(64)})


def npz_too_few_to_split(d: Path) -> Path:
    return _npz(d, train_images=_imgs(2), train_labels=np.array([0, 1]))


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _idx_folder(
    d: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Path:
    folder = d / "idx"
    folder.mkdir()
    for stem, (images, labels) in (("train", train), ("t10k", test)):
        _idx(folder / f"{stem}-images-idx3-ubyte", images)
        _idx(folder / f"{stem}-labels-idx1-ubyte", labels)
    return folder


def idx_zero_images(d: Path) -> Path:
    empty = np.zeros((0, 8, 8)), np.zeros(0)
    return _idx_folder(d, empty, empty)


def idx_test_class_unseen_in_train(d: Path) -> Path:
    return _idx_folder(d, (_imgs(40), np.arange(40) % 2), (_imgs(9), np.arange(9) % 3))


def idx_gzip_bomb(d: Path) -> Path:
    """A gzip'd IDX header claiming 1000 x 1000 x 1000 bytes (1 GB): refused from the header."""
    folder = _idx_folder(d, (_imgs(40), np.arange(40) % 2), (_imgs(9), np.arange(9) % 2))
    header = bytes([0, 0, 8, 3]) + b"".join((1000).to_bytes(4, "big") for _ in range(3))
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(10**6)))
    return folder


def folder_broken_symlink(d: Path) -> Path:
    write_tree(d / "t", {"a": 5, "b": 5})
    os.symlink(d / "nowhere.png", d / "t" / "a" / "dangling.png")
    return d / "t"


def folder_test_class_unseen_in_train(d: Path) -> Path:
    write_tree(d / "t", {"train/a": 5, "train/b": 5, "test/a": 2, "test/b": 2, "test/c": 2})
    return d / "t"


# (builder, text the one error line must contain besides the file's name, environment)
CASES: list[tuple[Callable[[Path], Path], str, dict[str, str]]] = [
    (absolute_zip_member, "member '/etc/a/evil.png' is an absolute path", {}),
    (dotdot_zip_member, "member 'data/../../a/evil.png' climbs out", {}),
    (dotdot_tar_member, "member '../b/evil.png' climbs out", {}),
    (absolute_tar_member, "member '/a/x.png' is an absolute path", {}),
    (tar_header_claims_2_gib, "member data/a/huge.png unpacks to 2,147,483,648 bytes", {}),
    (zip_with_encrypted_member, "is encrypted", {}),
    (empty_zip, "no image files found", {}),
    (garbage_tar, "cannot read the archive", {}),
    (npz_test_class_unseen_in_train, "class(es) 2 have no images in train", {}),
    (npz_one_stray_label, "class(es) 2, 3, 4, 5, 6 have no images in any split", {}),
    (npz_test_lacks_a_class, "class(es) 1 have no images in test", {}),
    (npz_zero_images, "holds 0 images", {}),
    (npz_empty_test_split, "[test_images]: holds 0 images", {}),
    (npz_missing_key, "missing key(s) train_labels", {}),
    (npz_float_images, "dtype float64", {}),
    (npz_nan_images, "1 of them NaN", {}),
    (npz_flat_images, "images have shape (40, 64)", {}),
    (npz_huge_labels, "far too large for a class index", {}),
    (npz_string_labels, "expected integer class indices", {}),
    (npz_object_array, "holds Python objects", {}),
    (npz_garbage_bytes, "cannot read the .npz file", {}),
    (npz_member_not_npy, "is not a numpy array", {}),
    (npz_header_lies, "truncated or damaged", {}),
    (npz_too_few_to_split, "would hold no images", {}),
    (idx_zero_images, "holds 0 images", {}),
    (idx_test_class_unseen_in_train, "class(es) 2 have no images in train", {}),
    (idx_gzip_bomb, "LIGHTLAYERS_MAX_MEMBER_BYTES", {"LIGHTLAYERS_MAX_MEMBER_BYTES": "100M"}),
    (folder_broken_symlink, "a/dangling.png: FileNotFoundError", {}),
    (folder_test_class_unseen_in_train, "extra: c", {}),
]


@pytest.mark.parametrize(("build", "expected", "env"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_one_clear_line(
    build: Callable[[Path], Path],
    expected: str,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = build(tmp_path)
    rc, out, err = _summary(capsys, str(path))
    assert rc == 2, err
    assert "Traceback" not in err and out == ""
    assert str(path) in err and expected in err


# --- configured limits -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LIGHTLAYERS_MAX_MEMBERS": "5"}, "more than 5 members"),
        ({"LIGHTLAYERS_MAX_MEMBER_BYTES": "100"}, "over the limit of 100 bytes"),
        ({"LIGHTLAYERS_MAX_TOTAL_BYTES": "1K"}, "more than 1,024 bytes"),
    ],
)
def test_configured_archive_limits(
    suffix: str,
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_tree(tmp_path / "t", {"a": 5, "b": 5})
    archive = pack(tmp_path / "t", tmp_path / f"t{suffix}")
    rc, _, _ = _summary(capsys, str(archive), "--json")
    assert rc == 0  # within the defaults
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache2"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc, _, err = _summary(capsys, str(archive))
    assert rc == 2 and expected in err and str(archive) in err and next(iter(env)) in err


def test_bad_limit_setting_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path / "t", {"a": 5, "b": 5})
    monkeypatch.setenv("LIGHTLAYERS_MAX_MEMBERS", "lots")
    rc, _, err = _summary(capsys, str(pack(tmp_path / "t", tmp_path / "t.zip")))
    assert rc == 2 and "LIGHTLAYERS_MAX_MEMBERS='lots'" in err


def test_a_member_cannot_read_past_its_declared_size() -> None:
    budget = Budget("x.zip", Limits(member_bytes=10**6))
    assert budget.read(io.BytesIO(b"1234"), "m", 4) == b"1234"
    with pytest.raises(DataError, match=r"x\.zip: member m holds more data than its header"):
        budget.read(io.BytesIO(bytes(5000)), "m", 4096)


# --- decompression bombs, for real -------------------------------------------------------------


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of ~9 MB holding one valid 2 GiB member of zeros (streamed, never in memory)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _images(3, "bomb/").items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("bomb/a/zeros.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        info._compresslevel = 1  # type: ignore[attr-defined]  # fastest; zeros shrink ~230x
        with zf.open(info, "w", force_zip64=True) as f:
            for _ in range(2048):
                f.write(zeros)
    return path


# The peak of this process's own memory (VmHWM): getrusage's ru_maxrss would also count the
# parent's resident size, which Linux carries over a fork and exec (a large pytest process).
PEAK_RSS = (
    "import re, sys\n"
    "from lightlayers.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def test_zip_bomb_is_refused_in_bounded_memory(zip_bomb: Path, tmp_path: Path) -> None:
    assert zip_bomb.stat().st_size < 20 * 2**20
    env = {**os.environ, "LIGHTLAYERS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "data", "summary", str(zip_bomb)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    # Refused from the member's declared size, before unpacking it.
    assert done.returncode == 2, done.stderr
    assert "member bomb/a/zeros.png unpacks to 2,147,483,648 bytes" in done.stderr
    assert str(zip_bomb) in done.stderr and "Traceback" not in done.stderr
    peak_kb = int(done.stderr.split("PEAK_KB")[1].split()[0])
    assert peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"


def test_npz_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A .npz is a zip too: savez_compressed of 600 MiB of zeros is ~600 KB on disk."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, train_images=np.zeros((600, 1024, 1024), np.uint8),
                        train_labels=np.zeros(600, np.uint8))  # fmt: skip
    assert path.stat().st_size < 5 * 2**20
    rc, _, err = _summary(capsys, str(path))
    assert rc == 2 and "member train_images.npy unpacks to 629,145,728 bytes" in err


# --- symlinks ------------------------------------------------------------------------------------


def _looped_tree(root: Path) -> Path:
    write_tree(
        root, {"train/NORMAL": 6, "train/PNEUMONIA": 8, "test/NORMAL": 3, "test/PNEUMONIA": 4}
    )
    os.symlink("..", root / "train" / "NORMAL" / "loop")
    os.symlink("../../..", root / "test" / "PNEUMONIA" / "loop")
    os.symlink("../NORMAL", root / "train" / "PNEUMONIA" / "other-class")
    return root


def test_symlink_loops_neither_hang_nor_relabel(tmp_path: Path) -> None:
    root = _looped_tree(tmp_path / "xray")
    env = {**os.environ, "LIGHTLAYERS_CACHE": str(tmp_path / "cache")}
    # A followed loop would never end: the timeout turns that hang into a failure.
    done = subprocess.run(
        [sys.executable, "-m", "lightlayers.cli", "data", "summary", str(root), "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    totals = {c: sum(s["splits"][k][c] for k in ("train", "val")) for c in s["classes"]}
    assert totals == {"NORMAL": 6, "PNEUMONIA": 8}
    assert s["splits"]["test"] == {"NORMAL": 3, "PNEUMONIA": 4}
    note = next(n for n in s["notes"] if "symlinked folder(s) not followed" in n)
    assert "train/NORMAL/loop -> .." in note and "train/PNEUMONIA/other-class" in note


def test_symlinks_out_of_the_tree_are_followed_and_listed(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 4, "b": 4})
    write_tree(tmp_path / "elsewhere", {"more": 3})
    os.symlink(tmp_path / "elsewhere" / "more", tmp_path / "t" / "a" / "more")
    (tmp_path / "loose.png").write_bytes(image_bytes(4242))
    os.symlink(tmp_path / "loose.png", tmp_path / "t" / "b" / "ext.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "elsewhere" / "more" / "back")  # a loop outside
    ds = load_dataset(tmp_path / "t", val_fraction=0.2, progress=False)
    assert sum(len(s) for s in ds.splits.values()) == 4 + 3 + 4 + 1
    (outside,) = (n for n in ds.notes if "symlinks to files outside" in n)
    assert "4 image(s)" in outside and "b/ext.png ->" in outside


def test_broken_symlink_can_be_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder_broken_symlink(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset(root, on_bad_image="skip", progress=False)
    ((file, reason),) = ds.skipped
    assert file == "a/dangling.png" and reason.startswith("FileNotFoundError")
    assert ds.summary()["skipped"] == [{"file": file, "reason": reason}]


# --- label sanity ------------------------------------------------------------------------------


def test_missing_classes_can_be_allowed_and_are_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = npz_test_class_unseen_in_train(tmp_path)
    rc, out, err = _summary(capsys, str(path), "--allow-missing-classes", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["allow_missing_classes"] is True
    assert s["missing_classes"] == {"train": ["2"], "val": ["2"]}
    assert any(n.startswith("allowed by allow_missing_classes: class(es) 2") for n in s["notes"])
    rc, out, _ = _summary(capsys, str(path), "--allow-missing-classes")
    assert "no images in train: 2" in out


def test_on_bad_image_works_for_every_source(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 8, "b": 8})
    (tmp_path / "t" / "b" / "bad.png").write_bytes(b"not a png")
    sources = {
        "folder": tmp_path / "t",
        "tar": pack(tmp_path / "t", tmp_path / "t.tar.gz"),
        "zip": pack(tmp_path / "t", tmp_path / "t.zip"),
        "npz": _npz(tmp_path, train_images=_imgs(40), train_labels=np.arange(40) % 2),
        "idx": _idx_folder(tmp_path, (_imgs(40), np.arange(40) % 2), (_imgs(8), np.arange(8) % 2)),
        "digits": "digits",
    }
    for kind, src in sources.items():
        if kind in ("folder", "tar", "zip"):
            with pytest.raises(DataError, match=r"bad\.png"):
                load_dataset(src, progress=False)
            with pytest.warns(UserWarning, match="skipped 1"):
                ds = load_dataset(src, on_bad_image="skip", progress=False)
            assert [f for f, _ in ds.skipped] == ["b/bad.png"], kind
        else:
            ds = load_dataset(src, on_bad_image="skip", progress=False)
            assert ds.skipped == () and ds.summary()["skipped"] == [], kind


# --- decoding workers die with their parent ------------------------------------------------------


@needs_shared
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork pool and /proc: Linux")
def test_decoding_workers_die_with_their_parent(tmp_path: Path) -> None:
    # Two workers even on a one-core machine, so the pool is always used.
    code = (
        "import sys\n"
        "import lightlayers.data.preprocess as p\n"
        "p._cpu_count = lambda: 2\n"
        "from lightlayers.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "LIGHTLAYERS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "data", "summary", str(CHEST_TAR), "--size", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while not workers and time.monotonic() < deadline and proc.poll() is None:
            workers = children(proc.pid)
            time.sleep(0.02)
        assert workers, "no decoding worker appeared"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [w for w in workers if alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()
    for w in left:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not left, f"decoding workers {left} outlived their parent"
