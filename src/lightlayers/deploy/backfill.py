"""Deployment numbers for trials that finished without them.

A study run with ``--deployment`` times each trial's model as ONNX (fp32 and int8) beside
PyTorch (:func:`lightlayers.deploy.bench.deployment_metrics`). Trials finished before the flag
was given have their model in their checkpoint: resuming the study with ``--deployment``
measures them from it, as the trial itself would have (the same export, the same training
images for the int8 calibration, the same threads), and adds the numbers to their record.
Nothing a trial recorded is changed: only numbers it lacks are added, and the checkpoint is
verified against the trial's record (its SHA-256) before it is trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightlayers.deploy.errors import DeployError
from lightlayers.runfolder.errors import RunFolderError

# The number whose absence marks a trial as not yet measured.
MARKER = "ort_int8_latency_ms"


@dataclass
class Backfill:
    """What :func:`measure_finished` did: trials measured, and one line per trial it could not."""

    measured: int = 0
    failed: list[str] = field(default_factory=list)


def missing(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished trials of ``rows`` (the store's dicts) without deployment numbers."""
    return [r for r in rows if r.get("status") == "done" and r.get(MARKER) is None]


def measure_finished(run_dir: Path, store: Any, rows: list[dict[str, Any]],
                     dataset_of: Callable[[dict[str, Any]], Any], split_seed: int,
                     advance: Callable[[str], None] = lambda label: None) -> Backfill:
    """Measure each trial of ``rows`` from its checkpoint and add the numbers to ``store``.

    ``dataset_of(row)``: the whole dataset the trial was drawn from, as the study decoded it.
    A trial that cannot be measured (a missing or changed checkpoint, no ONNX Runtime) is
    listed in the result with the reason and left as it was.
    """
    import torch

    from lightlayers.data.subsets import FULL, draw_subset, parse_train_size, subset_dataset
    from lightlayers.deploy.bench import deployment_metrics
    from lightlayers.runfolder.trials import FinishedTrial

    meta = store.meta()
    out = Backfill()
    threads = torch.get_num_threads()
    try:
        for row in rows:
            trial = FinishedTrial(run_dir, row, [], meta)
            try:
                model = trial.build_model()  # verifies the checkpoint's SHA-256 first
                ds = dataset_of(row)
                size = (row.get("config") or {}).get("train_size")
                subset = draw_subset(ds, FULL if size is None else parse_train_size(size),
                                     split_seed)
                recorded = trial.extra.get("train_set")
                if recorded is not None and subset.record(ds.classes) != recorded:
                    raise DeployError("its training images are not those drawn now")
                ds = subset_dataset(ds, subset)
                # The trial's own thread count: ONNX Runtime and PyTorch are timed as the
                # trial would have timed them.
                torch.set_num_threads(int(trial.extra.get("threads") or threads))
                numbers = deployment_metrics(model, ds.splits["train"], ds.splits["test"],
                                             dict(trial.extra.get("loader") or {}),
                                             budget_s=2.0)
            except (DeployError, RunFolderError, ImportError, ValueError) as e:
                first = str(e).splitlines()[0] if str(e) else repr(e)
                out.failed.append(f"{trial.label}: {first}")
            else:
                store.add_metrics(row["key"], numbers)
                out.measured += 1
            advance(trial.label)
    finally:
        torch.set_num_threads(threads)
    return out
