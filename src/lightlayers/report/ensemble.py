"""Seed ensembles: per model, its seeds' test probabilities averaged into one prediction.

Whether five tiny models beat one bigger one is a question of parameters as much as of
accuracy, so an ensemble counts the parameters (and the weights-file size) of all its
members. Its decision rule is its members': the mean of their recorded thresholds when they
all have one (binary tasks; each threshold was chosen on validation, or fixed at 0.5), else
the most probable class. Nothing is chosen on the test split. The scores are the registry's
test scores (:func:`lightlayers.metrics.classification_metrics`) of the averaged
probabilities, so an ensemble is scored exactly as a trial is.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightlayers import csvsafe
from lightlayers.report.load import Group, RunData


@dataclass(frozen=True)
class Ensemble:
    group: Group
    seeds: tuple[int, ...]
    params_total: int
    size_mb: float
    threshold: float | None
    metrics: dict[str, Any] = field(default_factory=dict)  # the registry's test scores
    member_accuracy: float = float("nan")  # the members' mean accuracy, for comparison

    @property
    def label(self) -> str:
        return f"{self.group.label} ensemble of {len(self.seeds)}"


def ensembles(run: RunData) -> tuple[list[Ensemble], list[str]]:
    """One ensemble per model with two or more finished seeds whose test predictions share
    their labels; notes for those left out."""
    from lightlayers.metrics import classification_metrics

    positive = (run.meta.get("data") or {}).get("positive_class")
    out: list[Ensemble] = []
    notes: list[str] = []
    for g in run.groups:
        done = [(t, p) for t in g.done if (p := run.predictions.get(t["id"])) is not None
                and len(p["labels"])]
        if len(done) < 2:
            continue
        labels = np.asarray(done[0][1]["labels"])
        if any(not np.array_equal(np.asarray(p["labels"]), labels) for _, p in done):
            notes.append(f"{g.label}: no seed ensemble, its seeds' test labels differ")
            continue
        probs = np.mean([np.asarray(p["probs"], dtype=np.float64) for _, p in done], axis=0)
        thresholds = [x for t, _ in done if (x := t.get("threshold")) is not None]
        threshold = float(np.mean(thresholds)) if len(thresholds) == len(done) else None
        m = classification_metrics(labels, probs, positive, threshold)
        m.pop("confusion", None)
        counts = [c for t, _ in done if (c := t.get("params_total")) is not None]
        sizes = [s for t, _ in done if (s := t.get("size_mb")) is not None]
        out.append(Ensemble(
            g, tuple(t["seed"] for t, _ in done),
            int(sum(counts)) if len(counts) == len(done) else 0,
            float(sum(sizes)) if len(sizes) == len(done) else float("nan"),
            threshold, m,
            float(np.mean([t["accuracy"] for t, _ in done if t.get("accuracy") is not None]))))
    return out, notes


def ensembles_csv(items: Sequence[Ensemble]) -> str:
    from lightlayers.metrics.registry import computed_metrics

    scores = [m.name for m in computed_metrics() if m.name != "threshold"]
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["model", "protocol", "seeds", "members", "params_total", "size_mb",
                "threshold", *scores, "member_mean_accuracy"])
    for e in items:
        w.writerow([e.group.model, e.group.protocol, " ".join(map(str, e.seeds)), len(e.seeds),
                    e.params_total, repr(e.size_mb), "" if e.threshold is None else
                    repr(e.threshold),
                    *(_cell(e.metrics.get(s)) for s in scores), repr(e.member_accuracy)])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)
