"""The run folder's files besides the store: results.csv, the settings check (and the data a
run folder may not sit inside).

Also read by whoever only reads run folders (the report writes a pooled results.csv and checks
that pooled folders share their settings), so it imports nothing of the study runner.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightlayers import csvsafe
from lightlayers.config import StudyConfig
from lightlayers.config import comparable_settings as _settings

if TYPE_CHECKING:
    from lightlayers.outputs import OutputFolder
    from lightlayers.store import ResultsStore


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


def write_results_csv(store: ResultsStore, folder: OutputFolder) -> None:
    folder.write("results.csv", results_csv_text(store.trials()))


def settings_diff(previous: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Settings that differ from a run folder's. A setting the folder predates counts as its
    default value, so folders written before it was added still resume."""
    if previous is None:
        return []
    defaults = _settings(StudyConfig())
    return sorted(k for k in set(previous) | set(now)
                  if previous.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))


def local_inputs(cfg: StudyConfig) -> list[Path]:
    """The study's data, when it is a local path: a run (or tuning) folder inside it is
    refused."""
    p = Path(cfg.data).expanduser()
    return [p] if p.exists() else []


__all__ = ["csv_columns", "local_inputs", "results_csv_text", "settings_diff",
           "write_results_csv"]
