"""Temporary folders in the system temp folder that do not outlive their process.

:func:`scratch_dir` removes its folder on every way out that runs code (return, exception,
Ctrl-C, SIGTERM through :mod:`lightlayers.signals`). A process killed outright (SIGKILL, the OOM
killer, a Ray worker cancelled by force) cannot, so each folder's name carries the pid that
owns it, ``lightlayers-<kind>-<pid>-<random>``, and the next :func:`scratch_dir` or
:func:`sweep` removes the folders whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lightlayers.signals import held

__all__ = ["scratch_dir", "sweep"]

_NAME = re.compile(r"lightlayers-(?P<kind>[a-z0-9]+)-(?P<pid>[0-9]+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep(kind: str, root: str | Path | None = None) -> list[Path]:
    """Remove the ``kind`` scratch folders under ``root`` (default: the temp folder) whose
    owning process has ended; returns them. A live owner's folder, a reused pid's, another
    user's and anything named otherwise stay."""
    base = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m or m["kind"] != kind or int(m["pid"]) == os.getpid():
            continue
        try:
            # Only real folders this user owns: never follow a link planted under the name.
            if not entry.is_dir(follow_symlinks=False) or entry.stat(
                    follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _alive(int(m["pid"])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def scratch_dir(kind: str, nest: bool = False) -> Iterator[Path]:
    """A new private folder ``lightlayers-<kind>-<pid>-*`` in the temp folder, removed when the
    block ends however it ends; leftovers of dead processes of the same kind go first.

    ``nest``: while the block runs, :mod:`tempfile`'s own temporary files and folders (those a
    library makes, e.g. ONNX Runtime's quantizer) are made inside it, so they go with it even
    when the process is killed before the library could remove them."""
    sweep(kind)
    path: str | None = None
    saved = tempfile.tempdir
    try:
        with held():  # created and named together, so the finally below sees it
            path = tempfile.mkdtemp(prefix=f"lightlayers-{kind}-{os.getpid()}-")
        if nest:
            tempfile.tempdir = path
        yield Path(path)
    finally:
        if nest:
            tempfile.tempdir = saved
        if path is not None:
            with held():  # a SIGTERM now waits until the folder is gone
                shutil.rmtree(path, ignore_errors=True)
