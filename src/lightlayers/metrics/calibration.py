"""Calibration: does a predicted probability of 0.8 come true 80% of the time?

Top-label calibration (Guo et al. 2017): each test image's confidence is the probability of
its most probable class, and it is right when that class is the true one. The confidences are
cut into equal-width bins over [0, 1]; the expected calibration error (ECE) is the mean, over
images, of |accuracy - mean confidence| of each image's bin. 0 is perfectly calibrated; a
model that says 0.99 and is right 90% of the time has an ECE near 0.09.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 15  # Guo et al.'s choice, and the most common one since


@dataclass(frozen=True)
class Reliability:
    """Per bin (``edges[i]`` to ``edges[i + 1]``): images, mean confidence, accuracy (NaN for
    an empty bin)."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        full = self.count > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.count[full] * gap).sum() / n)


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = BINS) -> Reliability:
    """Top-label reliability of ``probs`` (N, C) against ``labels`` (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    # A confidence of exactly 1 belongs to the last bin, not to a bin of its own.
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=right, minlength=bins) / count
    return Reliability(np.linspace(0.0, 1.0, bins + 1), count, confidence, accuracy)


def ece(labels: np.ndarray, probs: np.ndarray, **_: Any) -> float:
    """Expected calibration error of the test predictions (top label, 15 bins)."""
    return reliability(labels, probs).ece
