"""Executors: where a study's trials run, by name.

Each executor is one module with a ``create(cfg, protocol, device, out)`` factory, registered
by name with :func:`register_executor` together with its settings (a dataclass of
:func:`lightlayers.schema.setting` fields: they become YAML keys and ``lightlayers run``
flags); the contract is :class:`Executor`. ``local`` runs trials one after another in this
process; ``ray`` runs each as a Ray task on a local Ray instance or a cluster
(``pip install 'lightlayers[ray]'``). A registered factory is imported only when its executor
is used. Executors of other packages register through the ``lightlayers.executors`` entry point
group (a callable that calls :func:`register_executor`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightlayers.executors.base import Executor, Task, TaskOutcome
from lightlayers.schema import ConfigError, at_least, not_blank, setting

# (study settings, protocol, torch device, run folder) -> the executor. Typed loosely: the
# registry sits below the settings (lightlayers.config routes each executor's own settings
# through it), so it names none of their types.
Factory = Callable[..., Executor]


@dataclass(frozen=True)
class ExecutorInfo:
    """A registered executor.

    ``factory``: a callable, or ``"module:function"`` imported when the executor is first used.
    ``options``: a frozen dataclass of its settings (or None); an optional method
    ``validate(cfg)`` on it checks rules between them and the study's settings.
    ``runs_here``: its trials run in this process (on the study's ``device``); otherwise the
    driver only describes its own device and the workers resolve theirs.
    """

    name: str
    factory: Factory | str
    help: str
    options: type | None = None
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
    if not isinstance(name, str):  # a YAML list or mapping where a name belongs
        raise ValueError(f"an executor is named by text, got {type(name).__name__}; "
                         f"registered: {', '.join(sorted(EXECUTORS))}")
    if name not in EXECUTORS:
        load_plugins()
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; registered: "
                         f"{', '.join(sorted(EXECUTORS))}") from None


def _gpu_share(v: float) -> str | None:
    # Ray's own rule: a fraction of one GPU, or whole GPUs.
    if v < 0 or (v > 1 and not float(v).is_integer()):
        return "must be a fraction in [0, 1] or a whole number of GPUs"
    return None


@dataclass(frozen=True)
class RayOptions:
    """The ray executor's settings (see docs/ray.md)."""

    ray_address: str | None = setting(
        None, "join this Ray cluster ('auto', HOST:PORT or ray://HOST:PORT); default: start a "
        "local Ray instance", check=not_blank)
    gpus_per_trial: float = setting(
        0.0, "GPUs per Ray trial; fractions (0.25) share one GPU", check=_gpu_share)
    # None: `threads` (runtime.resolve_threads), so a Ray trial runs with the torch thread
    # count a local run uses and gives the same numbers.
    cpus_per_trial: int | None = setting(
        None, "CPUs Ray reserves per trial, also its torch threads unless --threads "
        "(default: --threads)", check=at_least(1))
    max_retries: int = setting(2, "resubmissions of a trial whose Ray worker or node died",
                               check=at_least(0))

    def validate(self, cfg: Any) -> None:
        # Ray hides the GPUs from a task that asks for none, so these could never work.
        if cfg.device == "cuda" and self.gpus_per_trial == 0:
            raise ConfigError("device cuda with executor ray needs gpus_per_trial > 0, e.g. "
                              "--gpus-per-trial 0.25")
        if cfg.device == "cpu" and self.gpus_per_trial > 0:
            raise ConfigError(f"gpus_per_trial {self.gpus_per_trial} with device cpu: the GPUs "
                              "would be reserved and never used; use --device auto or cuda")


register_executor(ExecutorInfo(
    "local", "lightlayers.executors.local:create",
    "one trial after another in this process (default)", runs_here=True))
register_executor(ExecutorInfo(
    "ray", "lightlayers.executors.ray:create",
    "one Ray task per trial, on a local Ray instance or a cluster "
    "(pip install 'lightlayers[ray]'; see docs/ray.md)", options=RayOptions))


def load_plugins() -> None:
    """Register the executors other installed packages declare (entry point group
    ``lightlayers.executors``), once."""
    from lightlayers.plugins import load_entry_points

    load_entry_points("lightlayers.executors", "executor")

__all__ = ["EXECUTORS", "Executor", "ExecutorInfo", "RayOptions", "Task", "TaskOutcome",
           "executor_info", "load_plugins", "register_executor"]

