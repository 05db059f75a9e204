"""Why a trial stayed near chance: notes naming the setting that fixes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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
