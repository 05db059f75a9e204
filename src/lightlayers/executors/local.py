"""The default executor: every trial in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lightlayers.executors.base import Task, TaskOutcome
from lightlayers.trial import failure, run_trial

if TYPE_CHECKING:
    import torch

    from lightlayers.config import Protocol, StudyConfig
    from lightlayers.progress import ProgressReporter


class LocalExecutor:
    """Runs trials one after another on ``device`` in this process."""

    def __init__(self, cfg: StudyConfig, protocol: Protocol, device: torch.device, out: Path,
                 reporter: ProgressReporter | None = None) -> None:
        self.cfg, self.protocol, self.device = cfg, protocol, device
        self.out, self.reporter = out, reporter

    def run(self, tasks: list[Task], start: Callable[[Task], None]) -> Iterator[TaskOutcome]:
        for task in tasks:
            start(task)
            try:
                res = run_trial(task.spec, task.data, task.data_key, self.cfg, self.protocol,
                                self.device, self.out, self.reporter, weights=task.weights)
            except Exception as e:  # the study goes on; the reason is recorded with the trial
                yield TaskOutcome(task, None, failure(e))
                continue
            yield TaskOutcome(task, res, None)


def create(cfg: StudyConfig, protocol: Protocol, device: torch.device,
           out: Path) -> LocalExecutor:
    return LocalExecutor(cfg, protocol, device, out)
