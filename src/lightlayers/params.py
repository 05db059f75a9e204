"""Parameter counts in the Keras convention the published tables use."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCount:
    total: int
    trainable: int

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        return f"{self.total:,} total, {self.trainable:,} trainable"


def count_params(model: nn.Module) -> ParamCount:
    """Total (Keras convention) and trainable parameter counts.

    Keras counts a BatchNorm's running mean and variance as (non-trainable) parameters, so
    ``total`` = every parameter + 2 per BatchNorm channel (``num_batches_tracked`` excluded).

    Example:
        >>> count_params(create_model("study-light-k3"))
        ParamCount(total=6447, trainable=6111)
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None \
                and m.running_var is not None:
            stats += m.running_mean.numel() + m.running_var.numel()
    return ParamCount(total=params + stats, trainable=trainable)
