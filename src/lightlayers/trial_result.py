"""What one finished trial gives back (:func:`lightlayers.trial.run_trial`): its numbers, its
epochs, its test predictions, what else it records and where its checkpoint is.

Kept apart from :mod:`lightlayers.trial` so that whoever only reads results (the study's
record, an executor, a tracker) imports no training code. The classes are plain, module-level
frozen dataclasses: a result crosses a process boundary (a Ray worker) by pickling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrialPredictions:
    """The test split's predictions: the class names, each image's label and the predicted
    probability of every class (one row per image)."""

    classes: list[str]
    labels: np.ndarray
    probs: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """As the results store records them (``classes``, ``labels``, ``probs``)."""
        return {"classes": self.classes, "labels": self.labels, "probs": self.probs}


@dataclass(frozen=True)
class TrialResult:
    """A finished trial, as the results store records it.

    ``metrics``: registered trial metrics (:mod:`lightlayers.metrics.registry`), None where
    not measured; ``history``: one dict per epoch; ``confusion``: the test split's confusion
    matrix (rows: labels, columns: predictions); ``extra``: everything else the trial records
    (settings used, device, notes, the training images, ...); ``checkpoint``: the checkpoint's
    path relative to the run folder.
    """

    metrics: dict[str, float | int | None]
    history: list[dict[str, Any]]
    confusion: list[list[int]]
    predictions: TrialPredictions
    extra: dict[str, Any]
    checkpoint: str

    def with_extra(self, **values: Any) -> TrialResult:
        """This result with ``values`` added to its ``extra`` (the node that ran it, ...)."""
        return dataclasses.replace(self, extra={**self.extra, **values})


__all__ = ["TrialPredictions", "TrialResult"]
