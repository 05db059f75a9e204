"""Executors: where a study's trials run.

``local`` (the default, :class:`lightlayers.runner.LocalExecutor`) runs them one after another
in this process; ``ray`` (:class:`lightlayers.executors.ray.RayExecutor`, needs
``pip install 'lightlayers[ray]'``) runs each as a Ray task on a local Ray instance or a cluster.

An executor yields ``(task, result, None)`` or ``(task, None, failure)`` per task and calls
``start(task)`` when it hands a task out; the caller (``run_study``) is the only writer of the
results store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightlayers.executors.ray import RayExecutor
    from lightlayers.runner import LocalExecutor

__all__ = ["LocalExecutor", "RayExecutor"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing this package pulls in neither the runner nor Ray.
    if name == "LocalExecutor":
        from lightlayers.runner import LocalExecutor

        return LocalExecutor
    if name == "RayExecutor":
        from lightlayers.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
