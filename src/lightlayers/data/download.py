"""Fetch an official file once into the cache, checked by MD5 before it is ever read."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.request
from pathlib import Path

from lightlayers.data.errors import DataError

__all__ = ["fetch", "md5sum"]


def md5sum(path: str | os.PathLike[str]) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _manual_fix(url: str, md5: str, target: Path) -> str:
    return (
        f"To fix it by hand: download {url} on a machine with network access, check that its "
        f"MD5 is {md5}, and place it at {target}"
    )


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(target: Path, md5: str) -> bool:
    """True when the file was already checked and has not changed since (saves re-hashing
    hundreds of MB on every load)."""
    try:
        stamp = json.loads(_stamp_path(target).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"md5": md5, **_stat_key(target)}


def _write_stamp(target: Path, md5: str) -> None:
    stamp = _stamp_path(target)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"md5": md5, **_stat_key(target)}))
        os.replace(tmp, stamp)
    finally:
        tmp.unlink(missing_ok=True)


def _check_existing(url: str, md5: str, target: Path) -> None:
    if _verified(target, md5):
        return
    got = md5sum(target)
    if got != md5:
        target.unlink()
        _stamp_path(target).unlink(missing_ok=True)
        raise DataError(
            f"{target} has MD5 {got}, expected {md5}: the file is damaged or not the official "
            f"one, so it was removed. Run the command again to download it. "
            + _manual_fix(url, md5, target)
        )
    _write_stamp(target, md5)


def fetch(url: str, md5: str, target: str | os.PathLike[str], timeout: float = 60.0) -> Path:
    """Return ``target``, downloading ``url`` there first if it is missing.

    The file is checked against ``md5`` (an existing file too, once per change of its size or
    mtime); a mismatch removes it and raises :class:`DataError`. The download goes to a
    temporary name in the same folder and is renamed into place only when its MD5 is right, so
    a broken download never looks like a finished one.
    """
    target = Path(target)
    if target.exists():
        _check_existing(url, md5, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(
                f"could not download {url} ({type(e).__name__}: {e}). "
                + _manual_fix(url, md5, target)
            ) from e
        got = md5sum(tmp)
        if got != md5:
            raise DataError(
                f"the download of {url} has MD5 {got}, expected {md5}; it was discarded. "
                + _manual_fix(url, md5, target)
            )
        os.replace(tmp, target)
    finally:
        # Whatever ended it (an error, Ctrl-C, SIGTERM), a partial download does not stay.
        tmp.unlink(missing_ok=True)
    _write_stamp(target, md5)
    return target
