"""Progress display: a rich live bar on a terminal, plain log lines elsewhere (CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressReporter:
    """Trial i/N, an epoch bar with loss/accuracy, and an ETA."""

    def __init__(self, total_trials: int, enabled: bool = True,
                 tty: bool | None = None) -> None:
        self.total = total_trials
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._progress: Any = None
        self._task: Any = None
        self._trial = 0
        self._t0 = time.perf_counter()
        if self.enabled and self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()

    def log(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_trial(self, name: str, epochs: int) -> None:
        self._trial += 1
        label = f"[{self._trial}/{self.total}] {name}"
        if self._progress is not None:
            self._task = self._progress.add_task(label, total=epochs, stats="")
        else:
            self.log(f"{label}: training {epochs} epochs")

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        stats = (f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                 f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}")
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=stats)
        else:
            self.log(f"  epoch {row['epoch']}/{epochs} {stats} ({row['time_s']:.1f}s)")

    def end_trial(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self.log(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
