"""Progress display: rich live bars on a terminal, plain log lines elsewhere (CI, pipes).

Two lines on a terminal: the study (trials done of all, elapsed, an ETA from the trials
measured so far) and the trial in progress (its epochs and losses). Both fit the terminal's
width, 80 columns included: the counts and times come first, and the loss text is what gets
cut when a line runs out of room.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

WIDTH = 80  # the narrowest terminal the lines are laid out for


def clock(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour on."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressReporter:
    """The study's trials done of all with elapsed time and ETA, each trial's epoch bar with
    loss and accuracy. ``console``: a rich Console to draw on (tests); default stderr's."""

    def __init__(self, total_trials: int, enabled: bool = True,
                 tty: bool | None = None, console: Any = None) -> None:
        self._total = total_trials
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._progress: Any = None
        self._task: Any = None
        self._study: Any = None
        self._trial = 0
        self._done = 0
        self._t0 = time.perf_counter()
        self._first: float | None = None  # when the first trial started: the ETA's clock
        if self.enabled and (self.tty or console is not None):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
            from rich.table import Column

            if console is None:
                console = Console(stderr=True)
            self._progress = Progress(
                TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=12), MofNCompleteColumn(),
                # Last and the only column that may be cut: the loss text, never a count.
                TextColumn("{task.fields[stats]}",
                           table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=console, transient=False,
            )
            self._study = self._progress.add_task("trials", total=max(1, total_trials),
                                                  stats=self._study_stats())
            self._progress.start()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        # The study learns how many trials are left to run only after it read the run folder.
        self._total = value
        if self._progress is not None:
            self._progress.update(self._study, total=max(1, value), stats=self._study_stats())

    def _study_stats(self) -> str:
        elapsed = time.perf_counter() - self._t0
        text = f"{clock(elapsed)} elapsed"
        if self._done and self._first is not None and self._done < self._total:
            per_trial = (time.perf_counter() - self._first) / self._done
            text += f", ETA {clock(per_trial * (self._total - self._done))}"
        return text

    def _fit(self, text: str) -> str:
        """``text`` cut to the room the stats column has on one line of the terminal (rich
        would otherwise squeeze the bar and counts to make room for it)."""
        p = self._progress
        tasks = p.tasks
        desc = max(len(t.description) for t in tasks)
        counts = max(2 * len(str(int(t.total or 0))) + 1 for t in tasks)
        room = min(p.console.width, 200) - desc - 12 - counts - 3 - 1
        if len(text) <= room:
            return text
        # Whole "name value" pairs only: a number cut to "0.8…" would read as another number.
        words = text.split(" ")
        kept = ""
        for i in range(0, len(words) - 1, 2):
            pair = " ".join(words[i:i + 2])
            if len(kept) + len(pair) + 3 > room:
                break
            kept = f"{kept} {pair}" if kept else pair
        return kept.removesuffix(" |") + " …" if kept else ""

    def log(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_trial(self, name: str, epochs: int) -> None:
        self._trial += 1
        if self._first is None:
            self._first = time.perf_counter()
        label = f"[{self._trial}/{self._total}] {name}"
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(label, total=epochs, stats="")
            self._progress.update(self._study, stats=self._study_stats())
        else:
            self.log(f"{label}: training {epochs} epochs")

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self._progress is not None:
            stats = (f"val_acc {row['val_acc']:.3f} val_loss {row['val_loss']:.3g} "
                     f"acc {row['train_acc']:.3f} loss {row['train_loss']:.3g}")
            self._progress.update(self._task, advance=1, stats=self._fit(stats))
            self._progress.update(self._study, stats=self._study_stats())
        else:
            self.log(f"  epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4g} acc "
                     f"{row['train_acc']:.3f} | val loss {row['val_loss']:.4g} acc "
                     f"{row['val_acc']:.3f} ({row['time_s']:.1f}s)")

    def end_trial(self, text: str) -> None:
        self._done += 1
        if self._first is None:
            self._first = self._t0
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self.log(text)
        if self._progress is not None:
            self._progress.update(self._study, completed=self._done,
                                  stats=self._study_stats())
        elif self._total > 1:
            self.log(f"  {self._done}/{self._total} trials done, {self._study_stats()}")

    def steps(self, label: str, total: int) -> Callable[[str], None]:
        """A bar of its own for a step after the trials; the returned function advances it
        by one item (named by its argument). Without a terminal, a line every tenth."""
        done = 0
        if self._progress is not None:
            task = self._progress.add_task(label, total=max(1, total), stats="")

            def advance(name: str) -> None:
                nonlocal done
                done += 1
                self._progress.update(task, advance=1, stats=self._fit(name))
                if done >= total:
                    self._progress.remove_task(task)
            return advance

        def log_every_tenth(name: str) -> None:
            nonlocal done
            done += 1
            if done == total or done * 10 // total != (done - 1) * 10 // total:
                self.log(f"  {label}: {done}/{total}")
        return log_every_tenth

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._study, stats=self._study_stats())
            self._progress.stop()
            self._progress = None
