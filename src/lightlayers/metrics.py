"""Test-set metrics: computed from stored probabilities, so any of them can be recomputed."""

from __future__ import annotations

from collections.abc import Sequence
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
    """Accuracy, balanced accuracy, sensitivity, specificity, precision, F1, ROC AUC, confusion.

    Binary tasks (``positive_class`` set, 2 columns): the positive class is predicted when its
    probability is >= ``threshold`` (default 0.5, i.e. argmax). Sensitivity is the positive
    class's recall, specificity the negative class's. Multiclass: argmax; precision, recall
    (as sensitivity), specificity and F1 are macro averages; AUC is one-vs-rest macro.
    ``collapsed`` is true when every prediction falls in one class.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, C) for N={len(labels)} labels, got {probs.shape}")
    n_classes = probs.shape[1]
    all_classes = list(range(n_classes))
    binary = positive_class is not None and n_classes == 2
    if binary:
        thr = 0.5 if threshold is None else float(threshold)
        preds = np.where(probs[:, positive_class] >= thr, positive_class, 1 - positive_class)
    else:
        thr = None
        preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, labels=all_classes)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "collapsed": bool(len(np.unique(preds)) == 1),
        "confusion": cm.tolist(),
        "threshold": thr,
    }
    present = len(np.unique(labels)) == n_classes
    if binary:
        neg = 1 - positive_class
        out["sensitivity"] = float(recall_score(labels, preds, pos_label=positive_class,
                                                zero_division=0))
        out["specificity"] = float(recall_score(labels, preds, pos_label=neg, zero_division=0))
        out["precision"] = float(precision_score(labels, preds, pos_label=positive_class,
                                                 zero_division=0))
        out["f1"] = float(f1_score(labels, preds, pos_label=positive_class, zero_division=0))
        out["auc"] = (float(roc_auc_score(labels == positive_class, probs[:, positive_class]))
                      if present else None)
    else:
        out["sensitivity"] = float(recall_score(labels, preds, labels=all_classes,
                                                average="macro", zero_division=0))
        tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
        fp = cm.sum(0) - np.diag(cm)
        with np.errstate(divide="ignore", invalid="ignore"):
            spec = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
        out["specificity"] = float(spec.mean())
        out["precision"] = float(precision_score(labels, preds, labels=all_classes,
                                                 average="macro", zero_division=0))
        out["f1"] = float(f1_score(labels, preds, labels=all_classes, average="macro",
                                   zero_division=0))
        if present:
            p = probs / probs.sum(axis=1, keepdims=True)
            out["auc"] = float(roc_auc_score(labels, p, multi_class="ovr", average="macro"))
        else:
            out["auc"] = None
    return out


# --- diagnosis ----------------------------------------------------------------------------
DIAGNOSIS = "diagnosis: "  # prefix of a trial note that explains a collapsed or chance result
# Running statistics still holding more than this share of their initial values (mean 0,
# variance 1) are not yet the statistics of the trained network.
BN_KEEP_LIMIT = 0.01


def diagnose(
    history: Sequence[dict[str, Any]],
    metrics: dict[str, Any] | None,
    protocol: Any,
    steps: int,
    *,
    bn_momentum: float | None = None,
    chance: float | None = None,
) -> list[str]:
    """Notes (each starting with :data:`DIAGNOSIS`) on why a trial's validation or test
    accuracy stayed near chance, naming the setting that fixes it; empty when it did not.

    ``history``: the epochs of ``train.fit`` (``train_acc``, ``val_acc``); ``metrics``: the
    test split's :func:`classification_metrics`, or None; ``protocol``: what it trained under
    (its name); ``steps``: optimisation steps run; ``bn_momentum``: the (smallest) momentum of
    the BatchNorm layers that trained, None when none did; ``chance``: the accuracy of always
    predicting the most frequent class (default: from the test confusion matrix, else 1/10).

    Near chance means within a tenth of the way from chance to 1; a model that did not learn
    stays within a fifth of the way on its training batches too.
    """
    if not history:
        return []
    if chance is None:
        cm = np.asarray(metrics["confusion"]) if metrics and metrics.get("confusion") else None
        chance = float(cm.sum(1).max() / cm.sum()) if cm is not None and cm.sum() else 0.1
    low = chance + 0.1 * (1 - chance)
    train_best = max(float(h.get("train_acc") or 0.0) for h in history)
    val_best = max(float(h.get("val_acc") or 0.0) for h in history)
    at_chance = []
    if val_best <= low:
        at_chance.append(f"validation accuracy never exceeded {val_best:.3f}")
    if metrics is not None and (metrics.get("collapsed") or metrics["accuracy"] <= low):
        at_chance.append(f"test accuracy is {metrics['accuracy']:.3f}"
                         + (" (one class predicted)" if metrics.get("collapsed") else ""))
    if not at_chance:
        return []
    where = " and ".join(at_chance) + f" (chance {chance:.3f})"
    if train_best <= chance + 0.2 * (1 - chance):
        epochs = f"{len(history)} epoch{'s' if len(history) > 1 else ''}"
        return [f"{DIAGNOSIS}the model did not learn: {where}, training accuracy reached only "
                f"{train_best:.3f} in {epochs}; try more --epochs or another --lr"]
    if bn_momentum is not None and 0 < bn_momentum < 1:
        keep = (1 - bn_momentum) ** steps
        if keep > BN_KEEP_LIMIT:
            faithful = (f" (the seed protocol keeps Keras' {bn_momentum:g} to match the "
                        "published study)" if getattr(protocol, "name", None) == "seed" else "")
            return [f"{DIAGNOSIS}BatchNorm running statistics not converged: momentum "
                    f"{bn_momentum:g} over {steps} steps keeps {keep:.0%} of the initial "
                    f"values; {where} while training accuracy reached {train_best:.3f}; "
                    f"--set bn_momentum=0.1{faithful}"]
    return [f"{DIAGNOSIS}{where} while training accuracy reached {train_best:.3f}: the model "
            "fits the training split but does not generalise to held-out images"]
