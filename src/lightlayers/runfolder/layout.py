"""A run folder's names, and the folder held open for writing by one study at a time."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO

from lightlayers.outputs import MANIFEST, OutputFolder, folder_kind
from lightlayers.runfolder.store import ResultsStore, StoreError

__all__ = ["RUN_FILES", "STORE_FILES", "RunFolder", "adopt_run_folder", "is_run_folder"]

# SQLite's write-ahead log and shared memory sit beside the store.
STORE_FILES = ("results.db", "results.db-wal", "results.db-shm")
# What `lightlayers run` writes in a run folder: its results store, lock, settings, tables,
# checkpoints and report.
RUN_FILES = (*STORE_FILES, ".lock", "config.yaml", "results.csv", "skipped_images.csv",
             "checkpoints", "report")
# What a failed first run may leave: the folder is removed when it holds nothing else.
_FIRST_RUN_FILES = frozenset({*STORE_FILES, ".lock", "config.yaml", "results.csv",
                              "skipped_images.csv", MANIFEST})


def is_run_folder(folder: Path) -> bool:
    """A folder ``lightlayers run`` made (its manifest says so, or it holds a results store
    from before manifests existed)."""
    return folder_kind(folder) == "run"


def adopt_run_folder(folder: Path) -> set[str] | None:
    """A run folder written before folders carried a manifest: its results store says it is
    one, and the names a run writes are its own; any other folder is not adopted."""
    if not is_run_folder(folder):
        return None
    return {name for name in RUN_FILES if (folder / name).exists()}


class RunFolder:
    """A run folder open for one study: claimed (see :class:`~lightlayers.outputs.OutputFolder`),
    locked against a second ``lightlayers run``, its store open.

    A folder this open created is removed again on :meth:`close` unless :attr:`recorded` was
    set: a study that fails before it records a trial (a typo in --data, weights or data
    errors) leaves no empty run folder behind."""

    def __init__(self, out: Path, inputs: Iterable[Path | str] = ()) -> None:
        self.path = out
        self.recorded = False
        self._created = _new_folders(out)
        self._folder = OutputFolder(out, "run", inputs=inputs, adopt=adopt_run_folder,
                                    what="run folder (--out)")
        self._lock: IO[str] | None = None
        try:
            self._lock = _lock(self._folder)
            # The store's files and the checkpoints' folder: a link planted at any of them is
            # refused here rather than written through.
            for name in (*STORE_FILES, "checkpoints"):
                self._folder.claim(name)
            self.store = ResultsStore(out / "results.db")
        except BaseException:
            self._close_folder()
            raise

    def write(self, name: str, data: bytes | str) -> Path:
        return self._folder.write(name, data)

    def claim(self, name: str) -> Path:
        return self._folder.claim(name)

    def close(self) -> None:
        self.store.close()
        self._close_folder()

    def _close_folder(self) -> None:
        if self._lock is not None:
            self._lock.close()
        self._folder.close()
        if self._created and not self.recorded:
            _remove_new_folders(self._created)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _new_folders(out: Path) -> list[Path]:
    """The folders ``out.mkdir(parents=True)`` would create, deepest first."""
    new = []
    for p in (out, *out.parents):
        if p.exists():
            break
        new.append(p)
    return new


def _remove_new_folders(created: list[Path]) -> None:
    """Remove what a failed first run created (the store, the lock, config.yaml), only where
    nothing else was written meanwhile: a folder holding anything unexpected stays."""
    for folder in created:
        try:
            if folder == created[0]:
                if {p.name for p in folder.iterdir()} <= _FIRST_RUN_FILES:
                    shutil.rmtree(folder)
            else:
                folder.rmdir()
        except OSError:
            return  # not empty or not ours: keep it


def _lock(folder: OutputFolder) -> IO[str]:
    """One process per run folder: a second one would reset the first one's running trial."""
    import fcntl

    path = folder.claim(".lock")
    # O_NOFOLLOW: a link planted as .lock is refused, not opened (claim checked it; this closes
    # the gap between that check and the open).
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"another `lightlayers run` is using {folder.path}; wait for it to finish or use "
            "another --out folder"
        ) from None
    return handle


