"""The run folder: everything ``lightlayers run`` writes for a study, and the only way in.

::

    RUN/
      .lightlayers.json      the manifest: this is a run folder, and the files it wrote
      .lock                  one study at a time
      results.db             the results store, the only record (SQLite; -wal/-shm beside it)
      results.csv            one row per trial, rewritten from the store
      config.yaml            the resolved settings
      skipped_images.csv     undecodable files left out (on_bad_image: skip)
      checkpoints/           one float32 safetensors file per trial
      report/                written by ``lightlayers report``

The study writes through :class:`RunFolder` (claim, lock, store) and the modules below; the
report, export, prediction and distillation read through :func:`find_trials` and the store, and
none of them imports the runner.

- :mod:`~lightlayers.runfolder.layout`: the names above, :class:`RunFolder` and its lock.
- :mod:`~lightlayers.runfolder.store`: the results store.
- :mod:`~lightlayers.runfolder.checkpoint`: a trial's checkpoint file and its hash.
- :mod:`~lightlayers.runfolder.results_csv`: results.csv.
- :mod:`~lightlayers.runfolder.settings`: whether a folder resumes with these settings.
- :mod:`~lightlayers.runfolder.trials`: the finished trials, verified and rebuilt.
- :mod:`~lightlayers.runfolder.errors`: its errors.

Names are imported on first use (PEP 562): reading one module does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name -> the module defining it.
_EXPORTS = {
    "RUN_FILES": "layout",
    "STORE_FILES": "layout",
    "RunFolder": "layout",
    "adopt_run_folder": "layout",
    "is_run_folder": "layout",
    "ResultsStore": "store",
    "StoreError": "store",
    "trial_key": "store",
    "checkpoint_name": "checkpoint",
    "checkpoint_sha256": "checkpoint",
    "save_checkpoint": "checkpoint",
    "csv_columns": "results_csv",
    "results_csv_text": "results_csv",
    "write_results_csv": "results_csv",
    "local_inputs": "settings",
    "settings_diff": "settings",
    "FinishedTrial": "trials",
    "choose_trial": "trials",
    "find_trials": "trials",
    "CheckpointMismatchError": "errors",
    "RunFolderError": "errors",
}

__all__ = [
    "RUN_FILES",
    "STORE_FILES",
    "CheckpointMismatchError",
    "FinishedTrial",
    "ResultsStore",
    "RunFolder",
    "RunFolderError",
    "StoreError",
    "adopt_run_folder",
    "checkpoint_name",
    "checkpoint_sha256",
    "choose_trial",
    "csv_columns",
    "find_trials",
    "is_run_folder",
    "local_inputs",
    "results_csv_text",
    "save_checkpoint",
    "settings_diff",
    "trial_key",
    "write_results_csv",
]

if TYPE_CHECKING:
    from lightlayers.runfolder.checkpoint import checkpoint_name, checkpoint_sha256, save_checkpoint
    from lightlayers.runfolder.errors import CheckpointMismatchError, RunFolderError
    from lightlayers.runfolder.layout import (
        RUN_FILES,
        STORE_FILES,
        RunFolder,
        adopt_run_folder,
        is_run_folder,
    )
    from lightlayers.runfolder.results_csv import csv_columns, results_csv_text, write_results_csv
    from lightlayers.runfolder.settings import local_inputs, settings_diff
    from lightlayers.runfolder.store import ResultsStore, StoreError, trial_key
    from lightlayers.runfolder.trials import FinishedTrial, choose_trial, find_trials


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightlayers.runfolder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lightlayers.runfolder.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
