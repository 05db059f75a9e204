"""What a report was drawn from, so that an unchanged run folder's report is not drawn again.

A report's bootstrap and figures take most of its time (tens of seconds at a hundred trials);
rerunning a finished study changes nothing they show. Each report written into a run folder
records ``.drawn-from.json``: a digest of every trial, prediction and history it read, of the
options that shape its files and of this lightlayers version, beside the notes it printed.
:func:`unchanged` says whether a folder's report still matches; the files are then reused
only when every one of them is still there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.report.load import RunData

__all__ = ["SOURCE_FILE", "digest", "recorded", "unchanged"]

SOURCE_FILE = ".drawn-from.json"


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(f"\x00{k}\x01".encode())
            _feed(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"[{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        h.update(json.dumps(value, default=str).encode())


def digest(run: RunData, formats: Sequence[str], options: dict[str, Any]) -> str:
    """SHA-256 of what a report of ``run`` shows: its trials (done, failed, unfinished), their
    predictions and histories, the run's metadata, the formats and options, the version."""
    from lightlayers.version import __version__

    h = hashlib.sha256()
    _feed(h, {"version": __version__, "formats": sorted(formats), "options": options,
              "meta": run.meta, "counts": run.counts, "failed": run.failed,
              "unfinished": run.unfinished, "main_size": run.main_size, "curve": run.curve,
              "groups": [(g.label, g.model, g.protocol, g.done, g.planned_seeds)
                         for g in run.groups],
              "predictions": run.predictions, "histories": run.histories})
    return h.hexdigest()


def recorded(folder: Path) -> dict[str, Any] | None:
    """The ``.drawn-from.json`` of a report folder; None when absent or unreadable."""
    try:
        data = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def unchanged(folder: Path, want: str) -> dict[str, Any] | None:
    """The record of ``folder``'s report when it was drawn from ``want`` and every file it
    wrote is still there (and no link); else None."""
    data = recorded(folder)
    if data is None or data.get("digest") != want:
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    for rel in files:
        p = folder / rel
        if p.is_symlink() or not p.is_file():
            return None
    return data
