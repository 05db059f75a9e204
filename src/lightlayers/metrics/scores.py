"""The test-split scores of the metric registry, one function each.

:func:`lightlayers.metrics.classification_metrics` calls every registered metric's ``compute``
with the same keyword arguments: ``labels`` (N,) true classes, ``probs`` (N, C)
probabilities, ``preds`` (N,) predicted classes, ``positive_class`` (the positive class of a
binary task, else None), ``threshold`` (the cut applied to the positive class's probability
in a binary task, else None) and ``confusion`` (C x C counts, rows true, columns predicted).
Each function takes what it needs and ignores the rest (``**_``).

Binary tasks score the positive class (sensitivity is its recall, specificity the negative
class's); multiclass tasks macro-average over the classes, and their AUC is one-vs-rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray, **_: Any) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray, **_: Any) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, preds))


def _classes(probs: np.ndarray) -> list[int]:
    return list(range(probs.shape[1]))


def sensitivity(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray,
                positive_class: int | None, **_: Any) -> float:
    from sklearn.metrics import recall_score

    if positive_class is not None:
        return float(recall_score(labels, preds, pos_label=positive_class, zero_division=0))
    return float(recall_score(labels, preds, labels=_classes(probs), average="macro",
                              zero_division=0))


def specificity(labels: np.ndarray, preds: np.ndarray, positive_class: int | None,
                confusion: np.ndarray, **_: Any) -> float:
    from sklearn.metrics import recall_score

    if positive_class is not None:
        return float(recall_score(labels, preds, pos_label=1 - positive_class, zero_division=0))
    cm = confusion
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    fp = cm.sum(0) - np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        spec = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    return float(spec.mean())


def precision(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray,
              positive_class: int | None, **_: Any) -> float:
    from sklearn.metrics import precision_score

    if positive_class is not None:
        return float(precision_score(labels, preds, pos_label=positive_class, zero_division=0))
    return float(precision_score(labels, preds, labels=_classes(probs), average="macro",
                                 zero_division=0))


def f1(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, positive_class: int | None,
       **_: Any) -> float:
    from sklearn.metrics import f1_score

    if positive_class is not None:
        return float(f1_score(labels, preds, pos_label=positive_class, zero_division=0))
    return float(f1_score(labels, preds, labels=_classes(probs), average="macro",
                          zero_division=0))


def auc(labels: np.ndarray, probs: np.ndarray, positive_class: int | None,
        **_: Any) -> float | None:
    """ROC AUC; None unless every class occurs in ``labels``."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) != probs.shape[1]:
        return None
    if positive_class is not None:
        return float(roc_auc_score(labels == positive_class, probs[:, positive_class]))
    p = probs / probs.sum(axis=1, keepdims=True)
    return float(roc_auc_score(labels, p, multi_class="ovr", average="macro"))


def collapsed(preds: np.ndarray, **_: Any) -> bool:
    """Every prediction falls in one class."""
    return bool(len(np.unique(preds)) == 1)


def threshold(threshold: float | None, **_: Any) -> float | None:
    """The decision threshold applied (binary tasks); None for argmax over classes."""
    return threshold
