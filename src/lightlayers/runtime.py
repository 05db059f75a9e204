"""Where and how trials compute: the device, the torch thread policy, seeding."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from lightlayers.config import ConfigError, StudyConfig

# torch's own default (the machine's cores, or OMP_NUM_THREADS), taken before anything here
# changes it.
_DEFAULT_THREADS = torch.get_num_threads()


def resolve_threads(cfg: StudyConfig) -> StudyConfig:
    """Fix the torch thread count of every trial, whichever executor runs it.

    CPU results depend on the thread count (it changes the order of floating-point sums), so one
    policy serves every executor: ``threads`` if given, else the executor's ``cpus_per_trial``
    if it has one and it is given, else this machine's default (all cores) -- except trials
    on GPUs (``gpus_per_trial`` > 0), which get one thread so several can share a node. An
    executor that reserves ``cpus_per_trial`` gets ``threads`` when it was not given, so a
    default Ray run gives the numbers of a default local run.
    """
    opts = dict(cfg.executor_options)
    threads = cfg.threads or opts.get("cpus_per_trial")
    if threads is None:
        threads = 1 if (opts.get("gpus_per_trial") or 0) > 0 else _DEFAULT_THREADS
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
