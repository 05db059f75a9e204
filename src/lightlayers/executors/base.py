"""The executor contract: what ``run_study`` hands an executor and what it gets back.

An executor runs a study's trials somewhere (this process, a Ray cluster, ...). It never writes
the results store: ``run_study`` is its only writer, and records each outcome as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from lightlayers.trial_result import TrialResult

if TYPE_CHECKING:
    from lightlayers.data import Dataset
    from lightlayers.models.weights import ResolvedWeights
    from lightlayers.progress import ProgressReporter
    from lightlayers.spec import TrialSpec


@dataclass(frozen=True)
class Task:
    """One trial to run: what to train, on which data, with which resolved weights."""

    spec: TrialSpec
    data: Dataset
    data_key: str
    weights: ResolvedWeights | None = None  # resolved before the study; None: takes none

    @property
    def key(self) -> str:
        return self.spec.key(self.data_key)


class TaskOutcome(NamedTuple):
    """One task's end: ``(task, result, None)`` for a finished trial, ``(task, None, failure)``
    for a failed one. ``failure`` is :func:`lightlayers.trial.failure`'s dict (``error``,
    ``traceback``, extra fields such as ``retries``)."""

    task: Task
    result: TrialResult | None
    failure: dict[str, Any] | None


@runtime_checkable
class Executor(Protocol):
    """Where a study's trials run.

    ``run`` calls ``start(task)`` when a task really begins (the store marks it running) and
    yields one :class:`TaskOutcome` per task, in any order. A trial's own exception is a
    failure outcome, never raised: the study goes on. ``KeyboardInterrupt`` may propagate; the
    executor then stops what it started. ``reporter`` is set by ``run_study`` before ``run``.
    """

    reporter: ProgressReporter | None

    def run(self, tasks: list[Task], start: Callable[[Task], None]) -> Iterator[TaskOutcome]:
        ...
