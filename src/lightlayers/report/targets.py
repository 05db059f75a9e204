"""The project's targets, stated as met or missed for a run (one folder, several pooled, or
rebuilt from committed files):

1. a LightLayers model of at most 10,000 parameters (total) at mean test accuracy >= 0.90,
   balanced accuracy >= 0.89 and ROC AUC >= 0.96 over 10 seeds;
2. the best model or seed ensemble of at most 100,000 parameters at accuracy >= 0.93;
3. the far goal: accuracy >= 0.946 and AUC >= 0.991 (Google AutoML Vision on MedMNIST v2's
   PneumoniaMNIST) with at most 100,000 parameters.

A model counts as LightLayers when the zoo builds it with a ``LightConv2d`` or
``LightLinear`` layer; its parameters are the run's recorded ``params_total``; an ensemble's
are the sum of its members'. Target 1 asks for 10 seeds: with fewer, it is "not measured at
10 seeds", whatever the means are.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightlayers.report.load import ReportError, RunData

SMALL_PARAMS = 10_000
LARGE_PARAMS = 100_000
SEEDS_REQUIRED = 10
SMALL = {"accuracy": 0.90, "balanced_accuracy": 0.89, "auc": 0.96}
LARGE_ACCURACY = 0.93
FAR = {"accuracy": 0.946, "auc": 0.991}
_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "AUC"}


@dataclass(frozen=True)
class Candidate:
    """One model (mean over its seeds) or one seed ensemble (scores of the averaged
    probabilities) of a run."""

    label: str
    params: int
    seeds: int
    scores: dict[str, float | None]
    ensemble: bool = False
    lightlayers: bool = False

    def describe(self) -> str:
        what = f"{self.label} ensemble of {self.seeds}" if self.ensemble else self.label
        n = "" if self.ensemble else f", {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return f"{what} ({self.params:,} parameters{n})"


@dataclass(frozen=True)
class Verdict:
    target: str
    status: str  # "met", "missed", "not measured at 10 seeds", "not measured"
    sentence: str


@functools.cache
def is_lightlayers(model: str) -> bool:
    """Whether the zoo's ``model`` holds a LightLayers layer; False for a name the zoo does
    not know (a model of another version) and for transfer backbones (built without their
    weights, they still hold no LightLayers layer, and building them is slow)."""
    from lightlayers.layers import LightConv2d, LightLinear
    from lightlayers.models import create_model, list_models

    if model not in list_models() or model.startswith("transfer-"):
        return False
    net = create_model(model)
    return any(isinstance(m, (LightConv2d, LightLinear)) for m in net.modules())


def _mean(values: list[float | None]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def candidates(run: RunData, ensembles_csv: str | Path | None = None) -> list[Candidate]:
    """Each model of ``run`` (means over its finished seeds) and each seed ensemble: computed
    from the run's stored predictions when it has them, else read from ``ensembles_csv``
    (a report's ``ensembles.csv``) when given."""
    out = []
    for g in run.groups:
        if not g.done:
            continue
        params = g.done[0].get("params_total")
        if params is None:
            continue
        out.append(Candidate(g.label, int(params), len(g.done),
                             {k: _mean([t.get(k) for t in g.done]) for k in _NAMES},
                             lightlayers=is_lightlayers(g.model)))
    if run.predictions:
        from lightlayers.report.ensemble import ensembles

        for e in ensembles(run)[0]:
            out.append(Candidate(e.group.label, e.params_total, len(e.seeds),
                                 {k: e.metrics.get(k) for k in _NAMES}, ensemble=True,
                                 lightlayers=is_lightlayers(e.group.model)))
    elif ensembles_csv is not None:
        out += read_ensembles(ensembles_csv)
    return out


def read_ensembles(path: str | Path) -> list[Candidate]:
    """A report's ``ensembles.csv`` as candidates."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path} does not exist; write it with `lightlayers report RUN_DIR`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return [Candidate(r["model"], int(r["params_total"]), int(r["members"]),
                          {k: float(r[k]) if r.get(k) else None for k in _NAMES},
                          ensemble=True, lightlayers=is_lightlayers(r["model"]))
                for r in rows]
    except (KeyError, ValueError) as e:
        raise ReportError(f"{path}: not a report's ensembles.csv ({e}); write it again with "
                          "`lightlayers report RUN_DIR`") from None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _shortfall(c: Candidate, goals: dict[str, float]) -> list[str]:
    """The goals ``c`` misses, each with its score and by how much."""
    out = []
    for k, goal in goals.items():
        v = c.scores.get(k)
        if v is None:
            out.append(f"{_NAMES[k]} not measured")
        elif v < goal:
            out.append(f"{_NAMES[k]} {v:.3f} < {goal:.3f}, short by {goal - v:.3f}")
    return out


def _scores(c: Candidate, keys: Sequence[str]) -> str:
    return ", ".join(f"{_NAMES[k]} {_fmt(c.scores.get(k))}" for k in keys)


def _meets(c: Candidate, goals: dict[str, float]) -> bool:
    return not _shortfall(c, goals)


def evaluate(cands: Sequence[Candidate]) -> list[Verdict]:
    """The three targets of the module docstring, each met, missed or not measured."""
    verdicts = []
    # 1. LightLayers <= 10,000 parameters, three scores, 10 seeds.
    t1 = (f"LightLayers model <= {SMALL_PARAMS:,} parameters, mean over {SEEDS_REQUIRED} "
          "seeds: accuracy >= 0.90, balanced accuracy >= 0.89, AUC >= 0.96")
    small = [c for c in cands if c.lightlayers and not c.ensemble and c.params <= SMALL_PARAMS]
    full = [c for c in small if c.seeds >= SEEDS_REQUIRED]
    keys = list(SMALL)
    if not small:
        verdicts.append(Verdict(t1, "not measured",
                                "no LightLayers model of at most 10,000 parameters in this run"))
    else:
        pool = full or small
        met = [c for c in pool if _meets(c, SMALL)]
        best = max(met or pool, key=lambda c: c.scores.get("accuracy") or 0.0)
        if not full:
            status = f"not measured at {SEEDS_REQUIRED} seeds"
            passing = ("its means pass all three" if _meets(best, SMALL)
                       else "; ".join(_shortfall(best, SMALL)))
            sentence = (f"at most {max(c.seeds for c in small)} seeds here; best by accuracy: "
                        f"{best.describe()}: {_scores(best, keys)}; {passing}")
        elif met:
            status, sentence = "met", f"{best.describe()}: {_scores(best, keys)}"
        else:
            status = "missed"
            sentence = (f"best by accuracy: {best.describe()}: "
                        f"{'; '.join(_shortfall(best, SMALL))}")
        verdicts.append(Verdict(t1, status, sentence))
    # 2 and 3: <= 100,000 parameters, single models or seed ensembles.
    large = [c for c in cands if c.params <= LARGE_PARAMS and c.scores.get("accuracy") is not None]
    t2 = f"best model or seed ensemble <= {LARGE_PARAMS:,} parameters: accuracy >= 0.93"
    t3 = f"far goal, <= {LARGE_PARAMS:,} parameters: accuracy >= 0.946 and AUC >= 0.991"
    if not large:
        verdicts += [Verdict(t2, "not measured", "no model of at most 100,000 parameters"),
                     Verdict(t3, "not measured", "no model of at most 100,000 parameters")]
        return verdicts
    best = max(large, key=lambda c: c.scores["accuracy"] or 0.0)
    acc = best.scores["accuracy"] or 0.0
    if acc >= LARGE_ACCURACY:
        verdicts.append(Verdict(t2, "met", f"{best.describe()}: accuracy {acc:.3f}"))
    else:
        verdicts.append(Verdict(t2, "missed", f"best: {best.describe()}: accuracy {acc:.3f} "
                                f"< 0.930, short by {LARGE_ACCURACY - acc:.3f}"))
    far = [c for c in large if _meets(c, FAR)]
    if far:
        c = max(far, key=lambda c: c.scores["accuracy"] or 0.0)
        verdicts.append(Verdict(t3, "met", f"{c.describe()}: {_scores(c, list(FAR))}"))
    else:
        by_auc = max(large, key=lambda c: c.scores.get("auc") or 0.0)
        text = f"best accuracy: {best.describe()}: {_scores(best, list(FAR))}"
        if by_auc is best:
            text = f"best accuracy and AUC: {best.describe()}: {_scores(best, list(FAR))}"
        else:
            text += f"; best AUC: {by_auc.describe()}: {_scores(by_auc, list(FAR))}"
        verdicts.append(Verdict(t3, "missed", text))
    return verdicts


def targets_markdown(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as a Markdown table: target, met or missed, the numbers behind it."""
    lines = ["| target | verdict | measured |", "| --- | --- | --- |"]
    for v in verdicts:
        status = v.status if v.status == "met" else f"**{v.status}**"
        lines.append(f"| {v.target} | {status} | {v.sentence} |")
    return "\n".join(lines) + "\n"
