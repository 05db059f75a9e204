"""Executors: where a study's trials run, by name.

Each executor is one module with a ``create(cfg, protocol, device, out)`` factory, registered
here by name (:func:`register_executor`); the contract is :class:`Executor`. ``local`` runs
trials one after another in this process; ``ray`` runs each as a Ray task on a local Ray
instance or a cluster (``pip install 'lightlayers[ray]'``). A registered factory is imported
only when its executor is used, so naming an executor costs nothing until it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightlayers.executors.base import Executor, Task, TaskOutcome

if TYPE_CHECKING:
    import torch

    from lightlayers.config import Protocol, StudyConfig

Factory = Callable[["StudyConfig", "Protocol", "torch.device", Path], Executor]


@dataclass(frozen=True)
class ExecutorInfo:
    """A registered executor.

    ``factory``: a callable, or ``"module:function"`` imported when the executor is first used.
    ``runs_here``: its trials run in this process (on the study's ``device``); otherwise the
    driver only describes its own device and the workers resolve theirs.
    """

    name: str
    factory: Factory | str
    help: str
    runs_here: bool = False

    def load(self) -> Factory:
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


EXECUTORS: dict[str, ExecutorInfo] = {}


def register_executor(info: ExecutorInfo) -> ExecutorInfo:
    """Make ``info.name`` a valid ``executor`` setting (YAML key, ``--executor`` choice)."""
    if info.name in EXECUTORS and EXECUTORS[info.name] != info:
        raise ValueError(f"executor {info.name!r} is registered already")
    EXECUTORS[info.name] = info
    return info


def executor_info(name: str) -> ExecutorInfo:
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; registered: "
                         f"{', '.join(sorted(EXECUTORS))}") from None


def create_executor(cfg: StudyConfig, protocol: Protocol, device: torch.device,
                    out: Path) -> Executor:
    """The executor ``cfg.executor`` names; built before any data is loaded, so that a missing
    optional dependency (Ray) is reported at once."""
    executor = executor_info(cfg.executor).load()(cfg, protocol, device, out)
    if not isinstance(executor, Executor):
        raise TypeError(f"executor {cfg.executor!r} built {type(executor).__name__}, which has no "
                        "run(tasks, start) or reporter (see lightlayers.executors.base.Executor)")
    return executor


register_executor(ExecutorInfo(
    "local", "lightlayers.executors.local:create",
    "one trial after another in this process (default)", runs_here=True))
register_executor(ExecutorInfo(
    "ray", "lightlayers.executors.ray:create",
    "one Ray task per trial, on a local Ray instance or a cluster "
    "(pip install 'lightlayers[ray]'; see docs/ray.md)"))

__all__ = ["EXECUTORS", "Executor", "ExecutorInfo", "Task", "TaskOutcome", "create_executor",
           "executor_info", "register_executor"]


def __getattr__(name: str) -> Any:
    # The executors themselves, lazily: importing this package pulls in neither torch nor Ray.
    if name == "LocalExecutor":
        from lightlayers.executors.local import LocalExecutor

        return LocalExecutor
    if name == "RayExecutor":
        from lightlayers.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
