"""What a trained model costs to run: multiply-accumulates, throughput and latency."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from lightlayers.train import synchronize


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates for one image (FLOP counter / 2, matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return int(counter.get_total_flops() // 2)


@torch.no_grad()
def measure_inference(model: nn.Module, x: torch.Tensor, device: torch.device,
                      budget_s: float = 1.0) -> tuple[float, float]:
    """Images/s at the batch size of ``x`` and median batch-1 latency in ms."""
    model.eval()
    model(x)  # warm-up (allocations, cudnn autotune)
    synchronize(device)
    n, t0 = 0, time.perf_counter()
    while n == 0 or (time.perf_counter() - t0 < budget_s and n < 20):
        model(x)
        synchronize(device)
        n += 1
    throughput = n * len(x) / (time.perf_counter() - t0)
    one = x[:1]
    model(one)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s / 2 and len(times) < 50):
        synchronize(device)
        t = time.perf_counter()
        model(one)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return float(throughput), float(np.median(times) * 1e3)
