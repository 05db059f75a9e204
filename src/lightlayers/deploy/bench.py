"""What an exported model costs to run on the CPU, beside PyTorch: batch-1 latency (median and
95th percentile) and images/s at a larger batch.

Both contestants compute the same thing, the exported module
(:class:`~lightlayers.deploy.graph.Deployable`: probabilities and Grad-CAM maps), on the same
input arrays with the same number of threads. Their calls alternate (ONNX Runtime, PyTorch,
ONNX Runtime, ...) so that other load on the machine hits both alike; each has one untimed
warm-up call first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Speed", "alternate", "compare_speed"]


@dataclass(frozen=True)
class Speed:
    latency_ms: float  # median wall time of one batch-1 call
    latency_p95_ms: float
    images_per_s: float  # at ``batch``
    batch: int
    calls: int  # timed batch-1 calls

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def alternate(calls: dict[str, Callable[[], Any]], budget_s: float, min_rounds: int,
              max_rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each call, round after round (each call once per round, in order),
    after one untimed warm-up round; stops after ``max_rounds``, or after ``min_rounds`` once
    ``budget_s`` seconds have passed."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or
                                   time.perf_counter() - start < budget_s):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return times


def compare_speed(runners: dict[str, Callable[[np.ndarray], Any]], one: np.ndarray,
                  many: np.ndarray, budget_s: float = 2.0) -> dict[str, Speed]:
    """Batch-1 latency on ``one`` (1, C, H, W) and throughput on ``many`` (B, C, H, W) of
    each runner (``x -> outputs``), measured alternately (:func:`alternate`)."""
    lat = alternate({k: (lambda r=r: r(one)) for k, r in runners.items()}, budget_s / 2,
                    min_rounds=10, max_rounds=500)
    thr = alternate({k: (lambda r=r: r(many)) for k, r in runners.items()}, budget_s / 2,
                    min_rounds=3, max_rounds=100)
    out = {}
    for k in runners:
        t1 = np.asarray(lat[k]) * 1e3
        out[k] = Speed(latency_ms=float(np.median(t1)),
                       latency_p95_ms=float(np.percentile(t1, 95)),
                       images_per_s=float(len(many) / np.median(thr[k])), batch=len(many),
                       calls=len(t1))
    return out


def torch_runner(module: torch.nn.Module) -> Callable[[np.ndarray], Any]:
    """``x -> outputs`` of a PyTorch module in inference mode (the array is wrapped, not
    copied, as ONNX Runtime reads it)."""
    module.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run
