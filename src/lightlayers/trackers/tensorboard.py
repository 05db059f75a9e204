"""The ``tensorboard`` tracker: event files per trial in ``RUN/tensorboard/<trial>/``.

``<trial>`` is model, seed and training size (``paper-conv_seed0``). Each holds the history as
scalars by epoch (``epoch/train_loss``, ``epoch/val_acc``, ...) and, through TensorBoard's
HParams plugin, the trial's settings with its test metrics (``test/accuracy``, ...), so the
HParams tab compares the trials of a study. ``tensorboard --logdir RUN/tensorboard`` shows them.
"""

from __future__ import annotations

from typing import Any

from lightlayers.trackers.base import StudyContext, TrialRecord


class TensorBoardTracker:
    def __init__(self, ctx: StudyContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter
        self.root = ctx.claim("tensorboard")

    def log_trial(self, trial: TrialRecord) -> None:
        from lightlayers.outputs import OutputError

        logdir = self.root / trial.slug
        if logdir.is_symlink():
            raise OutputError(f"{logdir} is a symbolic link; lightlayers does not write "
                              "through links: remove it")
        w = self.writer(log_dir=str(logdir))
        try:
            for step, name, value in trial.epoch_metrics():
                w.add_scalar(f"epoch/{name}", value, step)
            # run_name ".": the HParams summary in the trial's own folder, not a dated one.
            w.add_hparams(dict(trial.params),
                          {f"test/{k}": v for k, v in trial.metrics.items()}, run_name=".")
        finally:
            w.close()

    def close(self) -> None:
        pass


def create(ctx: StudyContext) -> Any:
    return TensorBoardTracker(ctx)
