"""The tracker contract: what a study hands an experiment tracker for each finished trial.

A tracker copies a study's numbers to another tool (MLflow, TensorBoard); the results store
stays the record. It is given each trial once, when the trial is recorded as done, wherever the
trial ran (this process or a Ray worker), so a tracker sees exactly what the store holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class StudyContext:
    """The study a tracker logs: its run folder and the resolved config.

    ``claim(name)``: the path of ``name`` inside the run folder, recorded as this tool's;
    refused (OutputError) when a file or folder not written by lightlayers is there.
    """

    run_dir: Path
    config: dict[str, Any]
    claim: Callable[[str], Path]

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial as a tracker logs it.

    ``params``: its settings, flat (``protocol.lr``, ``protocol.augment.rotate_deg``), each a
    str, int, float or bool. ``history``: one row per epoch (``epoch``, ``train_loss``,
    ``val_acc``, ...). ``metrics``: the final test metrics, finite numbers only, under the names
    the store gives them (``accuracy``, ``auc``, ``ece``, ...). ``files``: the trial's files
    (its checkpoint) by the name a tracker stores them under; ``record``: the trial's stored
    result as JSON-able data.
    """

    key: str
    name: str
    model: str
    seed: int
    protocol: str
    train_size: str | None
    params: dict[str, str | int | float | bool]
    history: list[dict[str, Any]]
    metrics: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """A name for a file or folder: model, seed and training size."""
        import re

        text = f"{self.model}_seed{self.seed}" + (f"_size{self.train_size}"
                                                  if self.train_size else "")
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)

    def epoch_metrics(self) -> list[tuple[int, str, float]]:
        """(epoch, name, value) of every number of the history (flags such as ``compiled``
        and the epoch itself left out)."""
        out = []
        for i, row in enumerate(self.history):
            step = int(row.get("epoch", i + 1))
            for k, v in row.items():
                if k != "epoch" and number(v) is not None:
                    out.append((step, k, float(v)))
        return out


def number(v: Any) -> float | None:
    """``v`` as a loggable number: finite ints and floats; bools, None and text are not."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


@runtime_checkable
class Tracker(Protocol):
    """An experiment tracker of one study.

    ``log_trial`` is called once per trial that finished in this run; ``close`` once at the
    end. Either may raise: the study turns the error into one warning and goes on without
    this tracker.
    """

    def log_trial(self, trial: TrialRecord) -> None:
        ...

    def close(self) -> None:
        ...
