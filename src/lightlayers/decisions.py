"""The choices a tuned model's recipe makes beyond its searched settings, made on the tuning's
validation folds and never on test: weight averaging (EMA), test-time augmentation (TTA),
longer training, and the decision threshold.

After a model's search, its best settings are trained again on each fold (the base), and once
more per candidate with one ingredient added (``CANDIDATES``), with the search's own fold seeds.
A candidate is kept when its objective beats the base's on every fold (and so on average):
folds that disagree say nothing, and a candidate is not kept on noise. The kept ones join the
model's settings for ``lightlayers run --tuned`` (each was judged alone, not in combination).
The threshold is judged on the base's held-out probabilities: on each fold, the threshold
Youden's J picks on the other folds' held-out images against 0.5, by balanced accuracy;
``val_youden`` is kept when it is higher on every fold. The numbers behind every choice
are recorded beside it, balanced accuracy included, so that an operating-point shift (what TTA
can be) is seen for what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["CANDIDATES", "Evaluated", "NotApplicable", "cross_fold_threshold", "decide",
           "decided_settings", "decisions_text"]

# Each candidate: what it adds to the tuned settings (``epochs`` as a factor of the protocol's).
CANDIDATES: dict[str, dict[str, Any]] = {
    "ema": {"ema": 0.999},
    "tta": {"tta": 4},
    "epochs": {"epochs": 2},
}


class Evaluated(Protocol):
    """One fold's held-out evaluation."""

    labels: np.ndarray
    probs: np.ndarray
    loss: float


class NotApplicable(Exception):
    """A candidate that cannot apply to this model or recipe (the message says why)."""


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, predicted))


def cross_fold_threshold(base: Sequence[Evaluated], positive: int) -> dict[str, Any]:
    """Per fold, balanced accuracy at argmax (0.5) and at the Youden threshold chosen on the
    other folds' held-out images."""
    from lightlayers.metrics.classification import choose_threshold

    at_half, at_youden, thresholds = [], [], []
    for k, ev in enumerate(base):
        others = [e for j, e in enumerate(base) if j != k]
        labels = np.concatenate([e.labels for e in others])
        scores = np.concatenate([e.probs[:, positive] for e in others])
        t = choose_threshold(labels == positive, scores)
        negative = 1 - positive
        cut = np.where(ev.probs[:, positive] >= t, positive, negative)
        thresholds.append(t)
        at_half.append(_balanced_accuracy(ev.labels, ev.probs.argmax(1)))
        at_youden.append(_balanced_accuracy(ev.labels, cut))
    keep = all(y > h for y, h in zip(at_youden, at_half, strict=True))
    return {"argmax": at_half, "val_youden": at_youden, "thresholds": thresholds,
            "chosen": "val_youden" if keep else "argmax"}


def decide(run: Callable[[dict[str, Any]], list[Evaluated]],
           objective: Callable[[Evaluated], float], maximize: bool, epochs: int,
           positive_class: int | None, num_classes: int,
           say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The decisions for one model. ``run(extra)``: the held-out evaluation of every fold after
    training with the tuned settings plus ``extra`` protocol settings (raises
    :class:`NotApplicable`); ``objective``: the tuning's objective of one evaluation."""
    def scored(evs: list[Evaluated]) -> dict[str, Any]:
        values = [objective(e) for e in evs]
        return {"objective": values, "mean": float(np.mean(values)),
                "balanced_accuracy": [_balanced_accuracy(e.labels, e.probs.argmax(1))
                                      for e in evs]}

    base_evs = run({})
    base = scored(base_evs)
    say(f"  base: {base['mean']:.4f}")
    out: dict[str, Any] = {"base": base, "candidates": {}, "settings": {}}
    for name, extra in CANDIDATES.items():
        settings = {"epochs": epochs * int(extra["epochs"])} if name == "epochs" else extra
        try:
            got = scored(run(settings))
        except NotApplicable as e:
            out["candidates"][name] = {"settings": settings, "kept": False,
                                       "not_applicable": str(e)}
            say(f"  {name}: not applicable ({e})")
            continue
        pairs = zip(got["objective"], base["objective"], strict=True)
        better = all(g > b if maximize else g < b for g, b in pairs)
        out["candidates"][name] = {"settings": settings, "kept": bool(better), **got}
        if better:
            out["settings"].update(settings)
        say(f"  {name}: {got['mean']:.4f} ({'kept' if better else 'not kept'})")
    if positive_class is not None and num_classes == 2 and len(base_evs) > 1:
        thr = cross_fold_threshold(base_evs, positive_class)
        out["threshold"] = thr
        if thr["chosen"] == "val_youden":
            out["settings"]["threshold"] = "val_youden"
        say(f"  threshold: balanced accuracy {np.mean(thr['argmax']):.4f} at 0.5, "
            f"{np.mean(thr['val_youden']):.4f} at Youden's J ({thr['chosen']})")
    else:
        out["threshold"] = {"chosen": "argmax",
                            "not_applicable": "needs two classes, a positive class and at "
                                              "least 2 folds"}
    return out


def decided_settings(decision: dict[str, Any] | None) -> dict[str, Any]:
    """The protocol settings a model's decisions add to its tuned ones ({} when none)."""
    return dict((decision or {}).get("settings") or {})


def decisions_text(decision: dict[str, Any]) -> str:
    """One line: what was kept and on what numbers, e.g. ``ema kept (0.981 vs 0.979); tta
    not kept (0.978); epochs not kept (0.977); threshold argmax (bal. acc 0.90 vs 0.89)``."""
    base = decision["base"]["mean"]
    parts = []
    for name, c in decision["candidates"].items():
        if "not_applicable" in c:
            parts.append(f"{name} n/a")
        else:
            parts.append(f"{name} {'kept' if c['kept'] else 'no'} ({c['mean']:.3f})")
    thr = decision.get("threshold") or {}
    if "not_applicable" not in thr:
        parts.append(f"threshold {thr['chosen']} (bal. acc {np.mean(thr['argmax']):.3f} at "
                     f"0.5, {np.mean(thr['val_youden']):.3f} Youden)")
    return f"base {base:.3f}; " + "; ".join(parts)
