"""Spread over seeds: mean, sample std, Student-t 95% confidence interval; the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom.

    scipy is a hard dependency of scikit-learn (itself a dependency), so it is always present;
    it is imported here only, because importing ``scipy.stats`` costs a few hundred ms.
    """
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Summary:
    """One metric over the seeds of one model. ``std`` and the CI need two or more values."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    min: float | None
    max: float | None


def summarize(values: Iterable[float | None], level: float = 0.95) -> Summary:
    """Mean, sample standard deviation (ddof=1) and the t-interval
    ``mean ± t(1 - (1 - level) / 2, n - 1) · std / sqrt(n)``; missing values (None, NaN) are
    left out, so ``n`` counts only the values that exist.

    Example:
        >>> s = summarize([0.80, 0.84, 0.82])
        >>> round(s.mean, 4), round(s.std, 4), round(s.ci_low, 4), round(s.ci_high, 4)
        (0.82, 0.02, 0.7703, 0.8697)
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, None, None, None, None, None, None)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean, None, None, None, xs[0], xs[0])
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half, min(xs), max(xs))


def pareto_front(cost: Sequence[float], gain: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none has cost <= and gain >= with one of
    them strict. Lower cost (parameters) and higher gain (accuracy) are better. Sorted by cost.

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.5, 0.4, 0.9, 0.9])
        [0, 2]
    """
    if len(cost) != len(gain):
        raise ValueError(f"cost and gain differ in length: {len(cost)} != {len(gain)}")
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -gain[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        # Sorted by cost then best gain first: a point is on the front iff it strictly beats
        # the best gain of every cheaper-or-equal point seen so far.
        if gain[i] > best:
            front.append(i)
            best = gain[i]
    return front
