from __future__ import annotations

import torch
from torch import nn


def light_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the reference L2 penalties of every LightLayer in ``model`` (0 when there are none).

    The reference adds ``1e-4 * (sum W1^2 + sum W2^2)`` per LightConv2d to the training loss;
    a trainer calls this once per step and adds the result.
    """
    from lightlayers.layers.light_conv import LightConv2d
    from lightlayers.layers.light_linear import LightLinear

    terms = [
        m.penalty() for m in model.modules() if isinstance(m, LightConv2d | LightLinear) and m.l2
    ]
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(terms).sum()
