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
    policy serves both executors: ``threads`` if given, else ``cpus_per_trial`` if given, else
    this machine's default (all cores) -- except Ray trials on GPUs, which get one thread so
    several can share a node. Ray reserves ``cpus_per_trial`` (default: ``threads``) CPUs per
    trial, so a default Ray run gives the numbers of a default local run.
    """
    threads = cfg.threads or cfg.cpus_per_trial
    if threads is None:
        gpu_trials = cfg.executor == "ray" and cfg.gpus_per_trial > 0
        threads = 1 if gpu_trials else _DEFAULT_THREADS
    return dataclasses.replace(cfg, threads=threads, cpus_per_trial=cfg.cpus_per_trial or threads)


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
