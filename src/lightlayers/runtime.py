"""Where and how trials compute: the device, the torch thread policy, seeding."""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from lightlayers.config import ConfigError, StudyConfig

# torch's own default (the machine's cores, or OMP_NUM_THREADS), taken before anything here
# changes it.
_TORCH_THREADS = torch.get_num_threads()


def physical_cores() -> int:
    """The physical cores this process may run on: its CPU set, with hyper-threads of one core
    counted once (Linux's topology files), and no more than a cgroup CPU quota allows."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 1))
    cores: set[str] = set()
    for c in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(c))
    n = max(1, len(cores))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def busy_cores(window: float = 0.25) -> float:
    """How many of the machine's CPUs other processes keep busy now: the share of busy time
    (niced work left out) over ``window`` seconds (Linux's /proc/stat) while this process
    sleeps; 0 elsewhere.
    Measured now, not the load average, whose minute-long memory would count a study that
    just finished against the next one."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        # Idle and iowait, and niced work too: a process at a lower priority yields its CPU.
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0) + fields[1]
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


@functools.cache
def default_threads() -> int:
    """Torch threads when none are asked for: OMP_NUM_THREADS when set; else the physical
    cores less those other processes keep busy now (:func:`busy_cores`), at least one. A
    thread more than there are free cores does not add a little: each step waits for its
    slowest thread, which waits for the other process (an epoch measured 28x slower with 2
    threads than with 1 beside one busy process on 2 cores). Measured once per process, so
    every trial a process starts (locally or on Ray) gets the same count."""
    if os.environ.get("OMP_NUM_THREADS"):
        return _TORCH_THREADS
    return max(1, min(physical_cores(), _TORCH_THREADS) - int(busy_cores() + 0.5))


def resolve_threads(cfg: StudyConfig) -> StudyConfig:
    """Fix the torch thread count of every trial, whichever executor runs it.

    CPU results depend on the thread count (it changes the order of floating-point sums), so one
    policy serves every executor: ``threads`` if given, else the executor's ``cpus_per_trial``
    if it has one and it is given, else :func:`default_threads` (the free physical cores) --
    except trials on GPUs (``gpus_per_trial`` > 0), which get one thread so several can share
    a node. An
    executor that reserves ``cpus_per_trial`` gets ``threads`` when it was not given, so a
    default Ray run gives the numbers of a default local run.
    """
    opts = dict(cfg.executor_options)
    threads = cfg.threads or opts.get("cpus_per_trial")
    if threads is None:
        threads = 1 if (opts.get("gpus_per_trial") or 0) > 0 else default_threads()
    if "cpus_per_trial" in opts:
        opts["cpus_per_trial"] = opts["cpus_per_trial"] or threads
    return dataclasses.replace(cfg, threads=threads, executor_options=opts)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
