"""What the tool writes, and only that: output folders it owns, files it wrote, writes that
never follow a link.

An output folder (a run folder, its ``report/``, a pooled report, a folder of heatmaps) is used
only when it is new, empty, or one this tool made: it holds a manifest, ``.lightlayers.json``,
naming its kind and every file written into it. A file is replaced or deleted only when the
manifest names it. Every write goes to a fresh temporary file in the target's folder and is
renamed over the target, so a reader never sees half a file and a link planted at the target,
or at a folder on the way, is refused instead of followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "OutputError", "OutputFolder", "check_not_inside", "folder_kind",
           "write_atomic", "write_output_file"]

MANIFEST = ".lightlayers.json"


class OutputError(Exception):
    """An output the tool must not write (a user error: one line, exit 2)."""


def _umask() -> int:
    # Read without a race only through /proc; os.umask set-and-restore is the portable way and
    # this process has a single writer thread at the moments it runs.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_no_links(path: Path, root: Path) -> None:
    """Refuse when ``path`` or a folder between ``root`` and it is a symbolic link."""
    rel = path.relative_to(root)
    p = root
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            raise OutputError(f"{p} is a symbolic link; lightlayers does not write through "
                              "links: remove it, or choose another output folder")


def write_atomic(path: Path, data: bytes | str, root: Path | None = None) -> Path:
    """Write ``data`` to ``path`` through a new temporary file in the same folder, renamed over
    the target: the file is whole or absent, with the mode the umask gives new files. A link at
    ``path`` or, when ``root`` is given, at any folder between ``root`` and ``path`` is refused
    (never followed); missing folders below ``root`` are created."""
    path = Path(path)
    if root is not None:
        root = Path(root)
        _check_no_links(path, root)
        for parent in reversed(path.relative_to(root).parents):
            folder = root / parent
            if not folder.is_dir():
                folder.mkdir()
    elif path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; lightlayers does not write through links: "
                          "remove it, or choose another output path")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        # mkstemp makes 0600 files; an output follows the umask like any file the user makes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sweep_leftovers(path)
    return path


def _sweep_leftovers(path: Path) -> None:
    """Temporary files of earlier writes of ``path`` that a killed process (SIGKILL, power
    loss) could not remove: named by this module's own pattern, regular files, and older than
    a minute (a concurrent writer's file is never that old when it is renamed)."""
    import glob
    import time

    now = time.time()
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            st = old.lstat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > 60:
                old.unlink()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_inside(out: Path, inputs: Iterable[Path | str], what: str) -> None:
    """Refuse an output ``out`` that is one of ``inputs`` or lies inside an input folder."""
    o = Path(out).absolute().resolve()
    for given in inputs:
        i = Path(given).expanduser().absolute().resolve()
        if o == i:
            raise OutputError(f"{what} {out} is also an input; write to a new path")
        if i.is_dir() and _inside(o, i):
            raise OutputError(f"{what} {out} lies inside the input {given}; write outside it")


def folder_kind(folder: Path) -> str | None:
    """The kind of output folder ``folder`` is ("run", "report", ...) when this tool made it:
    its manifest says so. Folders written before manifests existed were run folders only, and
    are known by their results store (a SQLite file with a ``trials`` table)."""
    kind = _manifest_kind(folder)
    if kind is not None:
        return kind
    db = folder / "results.db"
    if db.is_symlink() or not db.is_file():
        return None
    try:
        with open(db, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                              "name='trials'").fetchone()
        finally:
            con.close()
    except (OSError, sqlite3.DatabaseError):
        return None
    return "run" if row is not None else None


def _manifest_kind(folder: Path) -> str | None:
    m = folder / MANIFEST
    if m.is_symlink() or not m.is_file():
        return None
    try:
        kind = json.loads(m.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _inside_run_folder(path: Path) -> Path | None:
    for folder in Path(path).absolute().parents:
        if folder_kind(folder) == "run":
            return folder
    return None


def write_output_file(path: Path | str, data: bytes | str, inputs: Iterable[Path | str],
                      is_ours: Callable[[Path], bool], what: str) -> Path:
    """A single output file named by the user (an exported model, a predictions CSV): never an
    input or inside one, never a file of a run folder, never through a link, and an existing
    file is replaced only when ``is_ours`` recognises it as one this tool wrote."""
    path = check_output_file(path, inputs, is_ours, what)
    return write_atomic(path, data)


def check_output_file(path: Path | str, inputs: Iterable[Path | str],
                      is_ours: Callable[[Path], bool], what: str) -> Path:
    """:func:`write_output_file`'s checks alone, for a command to run before its work."""
    path = Path(path).expanduser()
    check_not_inside(path, inputs, what)
    run = _inside_run_folder(path)
    if run is not None:
        raise OutputError(f"{what} {path} lies inside the run folder {run}, whose files "
                          "lightlayers manages; write it outside the run folder")
    if path.is_symlink():
        raise OutputError(f"{what} {path} is a symbolic link; lightlayers does not write through "
                          "links: remove it, or choose another path")
    if path.exists():
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; name a file")
        if not is_ours(path):
            raise OutputError(f"{what} {path} exists and was not written by lightlayers; "
                              "choose another path, or move that file away first")
    return path


class OutputFolder:
    """A folder the tool writes into and owns (see the module's docstring).

    ``kind`` names what it holds ("run", "report", "heatmaps"); a folder made for one kind is
    not taken for another. ``adopt`` decides, for a folder written before manifests existed,
    which existing names are this tool's (None: such a folder is refused). Hold it open with
    ``with``: the folder is locked against a second writer meanwhile.
    """

    def __init__(self, path: Path | str, kind: str, inputs: Iterable[Path | str] = (),
                 adopt: Callable[[Path], set[str] | None] | None = None,
                 what: str = "output folder") -> None:
        self.path = Path(path).expanduser().absolute()
        self.kind = kind
        self._fd: int | None = None
        check_not_inside(self.path, inputs, what)
        self.files = self._claim(adopt, what)

    # --- ownership ------------------------------------------------------------------------
    def _claim(self, adopt: Callable[[Path], set[str] | None] | None, what: str) -> set[str]:
        p = self.path
        if p.is_symlink():
            raise OutputError(f"{what} {p} is a symbolic link; name the real folder")
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} {p} is a file, not a folder; choose another folder")
        p.mkdir(parents=True, exist_ok=True)
        self._lock()
        manifest = p / MANIFEST
        if manifest.is_symlink():
            raise OutputError(f"{manifest} is a symbolic link; lightlayers does not write "
                              "through links: remove it")
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                kind, files = data["kind"], data["files"]
                if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                    raise TypeError
            except (OSError, ValueError, KeyError, TypeError):
                raise OutputError(f"{manifest} is damaged; lightlayers cannot tell which files "
                                  f"of {p} it wrote: choose another {what}") from None
            if kind != self.kind:
                raise OutputError(f"{p} holds a lightlayers {kind} folder, not a {self.kind} "
                                  f"folder; choose another {what}")
            return {f for f in files if _safe_name(f)}
        entries = [e for e in p.iterdir()]
        if not entries:
            self._save(set())
            return set()
        adopted = adopt(p) if adopt is not None else None
        if adopted is None:
            shown = ", ".join(sorted(e.name for e in entries)[:3])
            more = ", ..." if len(entries) > 3 else ""
            raise OutputError(f"{what} {p} is not empty ({shown}{more}) and was not made by "
                              "lightlayers; choose a new or empty folder")
        self._save(adopted)
        return adopted

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another lightlayers command is writing into {self.path}; wait "
                              "for it to finish or choose another folder") from None
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _save(self, files: set[str]) -> None:
        write_atomic(self.path / MANIFEST, json.dumps(
            {"kind": self.kind, "files": sorted(files)}, indent=1) + "\n", root=self.path)

    # --- writing --------------------------------------------------------------------------
    def claim(self, rel: str) -> Path:
        """Record ``rel`` as this tool's before it is written by other means (a SQLite store);
        refused when a file not written by lightlayers is there."""
        target = self.path / rel
        _check_no_links(target, self.path)
        if rel not in self.files:
            if target.exists():
                raise OutputError(f"{target} was not written by lightlayers; it is kept: move "
                                  f"it away, or choose another folder than {self.path}")
            self.files.add(rel)
            self._save(self.files)
        return target

    def write(self, rel: str, data: bytes | str) -> Path:
        """Write ``rel`` (a path inside the folder, e.g. ``figures/roc.png``)."""
        if not _safe_name(rel):
            raise OutputError(f"{rel!r} is not a plain path inside {self.path}")
        target = self.claim(rel)
        return write_atomic(target, data, root=self.path)

    def remove(self, rel: str) -> None:
        """Delete ``rel`` if this tool wrote it; anything else stays."""
        if rel not in self.files:
            return
        target = self.path / rel
        _check_no_links(target.parent, self.path)
        with contextlib.suppress(FileNotFoundError):
            if target.is_symlink() or target.is_file():
                target.unlink()
        self.files.discard(rel)
        self._save(self.files)

    def owned(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        for rel in sorted(self.files):
            if rel.startswith(prefix) and (not suffixes or rel.endswith(suffixes)):
                yield rel


def _safe_name(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and \
        rel != MANIFEST

