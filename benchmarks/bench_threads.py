"""The default torch thread count against torch's own (every core), beside a busy process.

A study on a shared machine: another process keeps one core busy. Per model, one training
epoch (``lightlayers.train.fit`` on the study's 28 px chest X-rays, batch 64) runs with torch's
default thread count (every core, what ``--threads`` defaulted to before) and with
:func:`lightlayers.runtime.default_threads` (the physical cores the other process leaves
free), the two alternating in one process, first on a quiet machine and then beside one
spinning process. Prints seconds per epoch and their ratio side by side.

    .venv/bin/python benchmarks/bench_threads.py [--data NPZ] [--repeats N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightlayers.config import Protocol
from lightlayers.data import DeviceLoader, load_dataset
from lightlayers.models import create_model
from lightlayers.runtime import default_threads, physical_cores
from lightlayers.train import fit

DATA = Path(__file__).resolve().parents[1] / "../shared/data/chest_xray_pneumonia" \
    / "pneumoniamnist_28_reconstructed.npz"
MODELS = ("study-light-k3", "study-conv")


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _epoch(model_name: str, ds: Any, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=len(ds.classes), in_chans=ds.in_chans)
    train = DeviceLoader(ds.splits["train"], 64, "cpu", shuffle=True, seed=0)
    val = DeviceLoader(ds.splits["val"], 64, "cpu")
    start = time.perf_counter()
    fit(model, train, val, Protocol(epochs=1), torch.device("cpu"),
        train_labels=np.asarray(ds.splits["train"].labels), num_classes=len(ds.classes))
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ds = load_dataset(args.data)
    every = torch.get_num_threads()
    print(f"{physical_cores()} physical cores; torch's default {every} threads")
    print(f"{'model':<16} {'machine':<13} {'threads':>7} {'s/epoch':>8} "
          f"{'default':>7} {'s/epoch':>8} {'ratio':>6}")
    for busy in (False, True):
        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if busy else None
        if spinner is not None:
            spinner.start()
            time.sleep(1.0)
        try:
            ours = default_threads()
            for name in MODELS:
                _epoch(name, ds, ours)  # warm-up: first-call allocations
                old, new = [], []
                for _ in range(args.repeats):
                    old.append(_epoch(name, ds, every))
                    new.append(_epoch(name, ds, ours))
                a, b = statistics.median(old), statistics.median(new)
                where = "1 busy proc" if busy else "quiet"
                print(f"{name:<16} {where:<13} {every:>7} {a:>8.2f} {ours:>7} {b:>8.2f} "
                      f"{b / a:>5.2f}x")
        finally:
            stop.set()
            if spinner is not None:
                spinner.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
