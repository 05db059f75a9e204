"""What names one trial of a study: its model, seed, protocol and training size.

Below everything that plans, runs, stores or reads trials (the runner, the executors, the
checkpoints), so that each can name a trial without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightlayers.runfolder.store import trial_key

__all__ = ["TrialSpec"]


@dataclass(frozen=True)
class TrialSpec:
    model: str
    seed: int
    protocol: str
    # The training size's label (lightlayers.data.subsets.TrainSize); None: the whole
    # training split. The size is also in the trial's data key, hence in its key.
    train_size: str | None = None

    @property
    def label(self) -> str:
        """How progress lines name the trial; a size is named, the whole split is not."""
        size = f" (train {self.train_size})" if self.train_size is not None else ""
        return f"{self.model} seed {self.seed}{size}"

    def key(self, data_key: str) -> str:
        return trial_key(self.model, self.seed, self.protocol, data_key)
