"""Test-set metrics: computed from stored probabilities, so any of them can be recomputed."""

from __future__ import annotations

from typing import Any

import numpy as np


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Decision threshold on the positive-class score maximising Youden's J (sens + spec - 1).

    Among the thresholds with the best J, the middle of the score gap below the chosen cut:
    when validation separates the classes, every cut in that gap is equally good there, and the
    edge (the lowest positive score) would turn a slightly shifted test split into false
    positives. Meant for the validation split only: the test split never chooses anything.
    """
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    # Rounded so that equal J values tie (1 - 1/3 vs 2/3); the highest such cut wins.
    best = int(np.argmax(np.round(tpr - fpr, 12)))
    lower = thr[best + 1] if best + 1 < len(thr) else thr[best]
    upper = thr[best] if np.isfinite(thr[best]) else lower
    return float(np.clip((upper + lower) / 2, 0.0, 1.0))


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    positive_class: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Every registered score of the test predictions (each metric of
    :mod:`lightlayers.metrics.registry` with a ``compute`` function: accuracy, balanced
    accuracy, sensitivity, specificity, precision, F1, ROC AUC, collapsed, threshold, and any
    registered since) and the confusion matrix.

    Binary tasks (``positive_class`` set, 2 columns): the positive class is predicted when its
    probability is >= ``threshold`` (default 0.5, i.e. argmax). Sensitivity is the positive
    class's recall, specificity the negative class's. Multiclass: argmax; precision, recall
    (as sensitivity), specificity and F1 are macro averages; AUC is one-vs-rest macro.
    ``collapsed`` is true when every prediction falls in one class.
    """
    from sklearn.metrics import confusion_matrix

    from lightlayers.metrics.registry import computed_metrics

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, C) for N={len(labels)} labels, got {probs.shape}")
    n_classes = probs.shape[1]
    binary = positive_class is not None and n_classes == 2
    if binary:
        assert positive_class is not None  # binary says so
        thr = 0.5 if threshold is None else float(threshold)
        preds = np.where(probs[:, positive_class] >= thr, positive_class, 1 - positive_class)
    else:
        thr = None
        preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, labels=list(range(n_classes)))
    given = {"labels": labels, "probs": probs, "preds": preds,
             "positive_class": positive_class if binary else None, "threshold": thr,
             "confusion": cm}
    out: dict[str, Any] = {m.name: m.compute(**given) for m in computed_metrics()
                           if m.compute is not None}
    out["confusion"] = cm.tolist()
    return out
