"""Which differences between models are real: every pair of models of a run, the difference
of their test accuracy and ROC AUC with a 95% bootstrap interval.

Each bootstrap replicate draws the test images with replacement, the same draw for both
models (a paired bootstrap: an image that is hard for one model tends to be hard for the
other, and pairing removes that shared noise), and draws each model's seeds with
replacement, so the interval also holds the spread between training runs. A model's score
in a replicate is the mean over its drawn seeds of each seed's score on the drawn images, so
the point estimate is the difference of the report table's means. The interval is the
2.5th to 97.5th percentile of 2,000 replicates (fewer for large multiclass test splits, see
:func:`replicate_count`; the number is written with the results); with 2 or 3 seeds it
understates the seed spread (a bootstrap cannot see more variety than the seeds show).

Accuracy uses each trial's own decision rule (its recorded threshold, else argmax), as its
recorded accuracy does; AUC is the positive class's when binary, else the one-vs-rest macro
mean. Both come from the test probabilities stored with every trial; the draws come from a
generator seeded by the pair's names, so a report of an unchanged run is byte-identical.

Many pairs are compared at once (21 for 7 models, per score), so some intervals would exclude
0 by chance alone. Each pair therefore also gets a two-sided bootstrap p-value and that
p-value adjusted by Holm's step-down method across the pairs shown for the same score and
protocol (:func:`holm`); "distinguishable at the 95% level" means a Holm-adjusted p below
0.05, which holds the chance of any false claim among those pairs at 5%.
"""

from __future__ import annotations

import io
import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lightlayers import csvsafe
from lightlayers.report.load import Group, RunData

N_BOOT = 2000
# Fewer replicates than this leave each 95% limit resting on a couple of dozen draws: a large
# test split takes longer rather than going below it.
MIN_BOOT = 1000
LEVEL = 0.95
METRICS = ("accuracy", "auc")
_CHUNK = 250  # replicates at a time: bounds memory at _CHUNK x test images per array
# Image-class cells scored over all replicates, at most (see replicate_count): about 40 s
# here (2-core CPU), 4e-8 s a cell.
_WORK = 10**9


@dataclass(frozen=True)
class Member:
    """One finished trial's test predictions."""

    seed: int
    labels: np.ndarray
    probs: np.ndarray
    threshold: float | None


@dataclass(frozen=True)
class Comparison:
    protocol: str
    model_a: str
    model_b: str
    metric: str
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b
    low: float
    high: float
    n_images: int
    seeds_a: int
    seeds_b: int
    # Two-sided bootstrap p-value of "no difference", and the same adjusted by Holm's method
    # across the pairs of its family (same protocol and score; see with_holm).
    p_value: float = float("nan")
    p_holm: float = float("nan")

    @property
    def real(self) -> bool:
        """The interval excludes 0: the difference is unlikely to be noise (this pair alone,
        not adjusted for the other pairs)."""
        return self.low > 0 or self.high < 0

    @property
    def distinguishable(self) -> bool:
        """Holm-adjusted p below 0.05: the difference holds with the other pairs counted."""
        return bool(self.p_holm < 1 - LEVEL)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (same order out as in): the i-th smallest
    p (from 1) is multiplied by ``m - i + 1``, then made non-decreasing along that order and
    capped at 1. NaN stays NaN and does not count in ``m``.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.005])]
        [0.03, 0.06, 0.06, 0.02]
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if np.isfinite(p))
    m = len(finite)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * float(p)))
        out[i] = running
    return out


def family(c: Comparison) -> tuple[str, str]:
    """The family a pair's p-value is adjusted in: its protocol and score."""
    return c.protocol, c.metric


def with_holm(comps: Sequence[Comparison]) -> list[Comparison]:
    """``comps`` with ``p_holm`` computed over each family: the pairs of one protocol and one
    score among ``comps``. Call it on the pairs that are shown (after any filtering): the
    family is what the reader sees."""
    out = list(comps)
    families: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(out):
        families.setdefault(family(c), []).append(i)
    for idx in families.values():
        for i, p in zip(idx, holm([out[i].p_value for i in idx]), strict=True):
            out[i] = replace(out[i], p_holm=p)
    return out


def family_sizes(comps: Sequence[Comparison]) -> dict[tuple[str, str], int]:
    """Per family of :func:`with_holm`, the ``m`` of its Holm adjustment: its pairs that have
    a p-value (:func:`holm` leaves NaN out)."""
    sizes: dict[tuple[str, str], int] = {}
    for c in comps:
        sizes[family(c)] = sizes.get(family(c), 0) + int(bool(np.isfinite(c.p_value)))
    return sizes


def _pairs(n: int) -> str:
    return f"{n} pair" + ("" if n == 1 else "s")


def holm_family_text(comps: Sequence[Comparison], names: dict[str, str] | None = None) -> str:
    """What each Holm adjustment among ``comps`` was made across, in words, from the families
    :func:`with_holm` used, e.g. "the 3 pairs of each score and protocol". Families of
    different sizes are each given their own count, never one count for all."""
    names = names or {}
    sizes = {k: m for k, m in family_sizes(comps).items() if m > 0}
    if not sizes:
        return "no pair has a p-value to adjust"
    protocols = list(dict.fromkeys(p for p, _ in sizes))
    several = len(protocols) > 1
    each = "each score and protocol" if several else "each score"
    counts = set(sizes.values())
    if len(counts) == 1:
        m = counts.pop()
        return f"the {_pairs(m)} of {each}"
    parts = []
    for protocol in protocols:
        own = {metric: m for (p, metric), m in sizes.items() if p == protocol}
        where = f" under {protocol}" if several else ""
        if several and len(set(own.values())) == 1:
            parts.append(f"{_pairs(next(iter(own.values())))}{where}")
        else:
            parts += [f"{_pairs(m)} for {names.get(metric, metric)}{where}"
                      for metric, m in own.items()]
    return f"the pairs of {each} ({', '.join(parts)})"


def bootstrap_p(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference of 0 from its replicates ``d``: twice the
    smaller share of replicates on either side of 0, each count plus one (so that a finite
    number of replicates never claims p = 0), capped at 1."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2 * (tail + 1) / (len(d) + 1))


def members(run: RunData, group: Group) -> list[Member]:
    out = []
    for t in group.done:
        pred = run.predictions.get(t["id"])
        if pred is None or len(pred["labels"]) == 0:
            continue
        out.append(Member(t["seed"], np.asarray(pred["labels"], dtype=np.int64),
                          np.asarray(pred["probs"], dtype=np.float64), t.get("threshold")))
    return out


def predicted(probs: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    """The classes a trial predicts: its threshold on the positive class when it has one
    (binary tasks), else the most probable class."""
    if threshold is not None and probs.shape[1] == 2:
        pos = 1 if positive is None else positive
        return np.where(probs[:, pos] >= threshold, pos, 1 - pos)
    return probs.argmax(axis=1)


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for ``truth`` (bool, N) under each row of ``weights`` (B, N) of
    image counts: the probability that a positive outscores a negative, ties counting half,
    as ``sklearn.metrics.roc_auc_score`` with unit weights. NaN where a row holds one class."""
    order = np.argsort(score, kind="stable")
    s, t, w = score[order], truth[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    pos = np.add.reduceat(w * t, starts, axis=1)
    neg = np.add.reduceat(w * ~t, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def scores(m: Member, metric: str, positive: int | None, weights: np.ndarray) -> np.ndarray:
    """``metric`` of one trial under each row of image counts ``weights`` (B, N)."""
    if metric == "accuracy":
        right = (predicted(m.probs, positive, m.threshold) == m.labels).astype(np.float64)
        return weights @ right / weights.sum(axis=1)
    if metric == "balanced_accuracy":
        right = predicted(m.probs, positive, m.threshold) == m.labels
        recalls = []
        for c in np.unique(m.labels):
            mask = m.labels == c
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(weights @ (right & mask) / (weights @ mask))
        # A replicate that drew no image of a class has no recall for it: the mean of the
        # classes it drew, as sklearn's balanced_accuracy_score does for its own labels.
        return np.nanmean(np.stack(recalls), axis=0)
    if m.probs.shape[1] == 2:
        pos = 1 if positive is None else positive
        return weighted_auc(m.labels == pos, m.probs[:, pos], weights)
    p = m.probs / m.probs.sum(axis=1, keepdims=True)
    per_class = [weighted_auc(m.labels == c, p[:, c], weights) for c in range(p.shape[1])]
    return np.mean(per_class, axis=0)


def replicate_count(n_members: int, n_images: int, n_classes: int) -> int:
    """Replicates for a run: :data:`N_BOOT`, fewer (never under :data:`MIN_BOOT`) when the AUC
    of every trial under every replicate would exceed :data:`_WORK` image-class cells (a
    multiclass test split of 10,000 images), so a report stays a matter of seconds to a
    minute; :func:`pairwise` says so in a note when it draws fewer."""
    cells = max(1, n_members * n_images * (n_classes if n_classes > 2 else 1))
    return int(min(N_BOOT, max(MIN_BOOT, _WORK // cells)))


def _interval(d: np.ndarray) -> tuple[float, float]:
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(d, [tail, 100 - tail])
    return float(low), float(high)


def pairwise(run: RunData, n_boot: int | None = None, which: Sequence[str] = METRICS
             ) -> tuple[list[Comparison], list[str], int]:
    """Every pair of models under the same protocol; notes for pairs that cannot be compared;
    the number of replicates drawn (``n_boot``, default :func:`replicate_count`). ``which``:
    the scores compared (accuracy, balanced_accuracy, auc)."""
    positive = (run.meta.get("data") or {}).get("positive_class")
    out: list[Comparison] = []
    notes: list[str] = []
    by_protocol: dict[str, list[tuple[Group, list[Member]]]] = {}
    for g in run.groups:
        ms = members(run, g)
        if ms:
            by_protocol.setdefault(g.protocol, []).append((g, ms))
    used = n_boot or N_BOOT
    for protocol, groups in by_protocol.items():
        labels = groups[0][1][0].labels
        same = [(g, ms) for g, ms in groups
                if all(np.array_equal(m.labels, labels) for m in ms)]
        for g, _ in groups:
            if all(g is not h for h, _ in same):
                notes.append(f"{g.label}: not compared with the other models, its test labels "
                             "differ from theirs")
        if len(same) < 2:
            continue
        n, n_classes = len(labels), same[0][1][0].probs.shape[1]
        metrics = [m for m in which
                   if m != "auc" or len(np.unique(labels)) == n_classes]  # AUC: every class
        trials = sum(len(ms) for _, ms in same)
        used = n_boot or replicate_count(trials, n, n_classes)
        if n_boot is None and used < N_BOOT:
            notes.append(f"paired bootstrap ({protocol}): {used:,} replicates instead of "
                         f"{N_BOOT:,}, as {trials} trials x {n:,} test images"
                         + (f" x {n_classes} classes" if n_classes > 2 else "")
                         + f" would make the report slow; each 95% limit rests on about "
                         f"{used * (1 - LEVEL) / 2:.0f} replicates")
        # One draw of the test images for every model: each pair is compared on the same
        # images, and each trial is scored once per replicate rather than once per pair.
        rng = np.random.default_rng(zlib.crc32(f"images|{protocol}".encode()))
        ones = np.ones((1, n))
        point = {(id(g), k): float(np.mean([scores(m, k, positive, ones)[0] for m in ms]))
                 for g, ms in same for k in metrics}
        per_trial: dict[tuple[int, str], list[np.ndarray]] = {}
        for start in range(0, used, _CHUNK):
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, used - start))
            weights = weights.astype(np.float64)
            for g, ms in same:
                for k in metrics:
                    per_trial.setdefault((id(g), k), []).append(
                        np.stack([scores(m, k, positive, weights) for m in ms]))
        boot = {key: np.concatenate(v, axis=1) for key, v in per_trial.items()}  # (seeds, B)
        cols = np.arange(used)
        for (ga, a), (gb, b) in itertools.combinations(same, 2):
            for k in metrics:
                # Each model's seeds drawn with replacement, per replicate.
                seeds = np.random.default_rng(zlib.crc32(f"{ga.label}|{gb.label}|{k}".encode()))
                ra = boot[id(ga), k][seeds.integers(0, len(a), (len(a), used)), cols].mean(0)
                rb = boot[id(gb), k][seeds.integers(0, len(b), (len(b), used)), cols].mean(0)
                low, high = _interval(ra - rb)
                mean_a, mean_b = point[id(ga), k], point[id(gb), k]
                out.append(Comparison(protocol, ga.label, gb.label, k, mean_a, mean_b,
                                      mean_a - mean_b, low, high, n, len(a), len(b),
                                      bootstrap_p(ra - rb)))
    return with_holm(out), notes, used


CSV_FIELDS = ("protocol", "model_a", "model_b", "metric", "mean_a", "mean_b", "difference",
              "ci95_low", "ci95_high", "interval_excludes_zero", "n_images", "seeds_a", "seeds_b",
              "bootstrap_replicates", "p_bootstrap", "p_holm", "distinguishable_holm")


def comparisons_csv(comps: Sequence[Comparison], n_boot: int = N_BOOT) -> str:
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in comps:
        w.writerow([c.protocol, c.model_a, c.model_b, c.metric, repr(c.mean_a), repr(c.mean_b),
                    repr(c.difference), repr(c.low), repr(c.high), int(c.real), c.n_images,
                    c.seeds_a, c.seeds_b, n_boot, repr(c.p_value), repr(c.p_holm),
                    int(c.distinguishable)])
    return buf.getvalue()


def distinguishable_sentence(comps: Sequence[Comparison], names: dict[str, str] | None = None
                             ) -> str:
    """One sentence per score: which pairs are distinguishable at the 95% level after Holm's
    correction across the pairs shown (the better model named first), or that none is."""
    names = names or {"accuracy": "accuracy", "auc": "AUC",
                      "balanced_accuracy": "balanced accuracy"}
    parts = []
    families: dict[tuple[str, str], list[Comparison]] = {}
    for c in comps:
        families.setdefault(family(c), []).append(c)
    several = len({p for p, _ in families}) > 1
    for (protocol, metric), cs in families.items():
        what = names.get(metric, metric) + (f" ({protocol})" if several else "")
        won = [f"{c.model_a} > {c.model_b}" if c.difference > 0 else f"{c.model_b} > {c.model_a}"
               for c in cs if c.distinguishable]
        if not any(np.isfinite(c.p_holm) for c in cs):
            parts.append(f"{what}: no p-values recorded")
        elif won:
            of = "of the one pair" if len(cs) == 1 else f"of {len(cs)} pairs"
            parts.append(f"{what}: {', '.join(won)} ({of})")
        else:
            parts.append(f"{what}: " + ("not the one pair" if len(cs) == 1
                                        else f"none of the {len(cs)} pairs"))
    if not parts:
        return ""
    return ("Distinguishable at the 95% level after Holm's correction across the pairs shown: "
            + "; ".join(parts) + ".")


def merge_runs(runs: Sequence[tuple[RunData, str]]) -> RunData:
    """Several runs as one, for :func:`pairwise` across run folders (a distilled model against
    its labels-only twin, one preprocessing against another): each group's label gains its
    run's tag, and each trial a new id so that trial ids from different folders cannot
    collide. Raises :class:`ReportError` unless every run tested on the same images, since a
    paired bootstrap pairs the images."""
    from lightlayers.report.load import ReportError

    def test_split(run: RunData) -> object:
        return (((run.meta.get("data_fingerprint") or {}).get("split") or {})
                .get("members") or {}).get("test")

    first, _ = runs[0]
    groups: list[Group] = []
    predictions: dict[int, dict] = {}
    ids = itertools.count(1)  # new ids: those of different folders (or pools) would collide
    for run, tag in runs:
        if test_split(run) != test_split(first) or test_split(run) is None:
            raise ReportError(
                f"{run.run_dir} and {first.run_dir} were not tested on the same images; "
                "compare runs made from the same data and split")
        for g in run.groups:
            done = []
            for t in g.done:
                new = next(ids)
                if t["id"] in run.predictions:
                    predictions[new] = run.predictions[t["id"]]
                done.append({**t, "id": new})
            groups.append(Group(f"{g.label}{tag}", g.model, g.protocol, done,
                                list(g.planned_seeds)))
    return RunData(first.run_dir, groups, [], [], first.meta, {}, predictions, {})
