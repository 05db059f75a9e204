"""A run folder's results.csv: one row per trial, written from the store after each trial.

The report writes a pooled results.csv the same way, so this imports nothing of the runner.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lightlayers import csvsafe

if TYPE_CHECKING:
    from lightlayers.runfolder.store import ResultsStore


class _Folder(Protocol):
    def write(self, name: str, data: bytes | str) -> Path: ...


def csv_columns() -> list[str]:
    """results.csv's columns: the trial, every registered trial metric in its declaration order
    (:mod:`lightlayers.metrics.registry`), then the attempts and the error."""
    from lightlayers.metrics.registry import trial_metrics

    return ["model", "seed", "protocol", "status", *(m.name for m in trial_metrics()),
            "attempts", "error"]


def results_csv_text(trials: Any, extra_columns: tuple[str, ...] = ()) -> str:
    """results.csv of ``trials`` (the store's trial dicts), with ``extra_columns`` last; a
    study with training sizes adds each trial's size and training images after its protocol."""
    buf = io.StringIO()
    trials = list(trials)
    names = csv_columns()
    if any((t.get("config") or {}).get("train_size") for t in trials):
        at = names.index("protocol") + 1
        names[at:at] = ["train_size", "train_images"]
        trials = [{**t, "train_size": (t.get("config") or {}).get("train_size") or "all",
                   "train_images": ((t.get("extra") or {}).get("train_set") or {}).get("images")}
                  for t in trials]
    # csvsafe: a text cell a spreadsheet would run as a formula (an error message, a name)
    # is written as text.
    w = csvsafe.DictWriter(buf, fieldnames=[*names, *extra_columns],
                           extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for t in trials:
        # Booleans (collapsed) as 0/1; a non-finite value as nan, inf or -inf, a missing one
        # as an empty cell.
        w.writerow({k: int(v) if isinstance(v, bool) else v for k, v in t.items()})
    return buf.getvalue()


def write_results_csv(store: ResultsStore, folder: _Folder) -> None:
    folder.write("results.csv", results_csv_text(store.trials()))


__all__ = ["csv_columns", "results_csv_text", "write_results_csv"]
