"""LightLinear: the dense layer of LightLayers (the paper's LightDense)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LightLinear"]


class LightLinear(nn.Module):
    """A rank-``k`` linear layer: ``y = x @ (c*W1) @ (c*W2) + b`` with ``c = sqrt(2/out_features)``.

    ``W1: in_features x k``, ``W2: k x out_features``, one bias, no activation in between.
    Parameters: ``k*(in_features + out_features) + out_features`` (with bias).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample (the reference's ``units``).
        k: rank, >= 1.
        bias: learn the output bias (zero-initialised).
        l2: optional L2 coefficient on ``W1``, ``W2`` returned by :meth:`penalty` (0 by default;
            the reference regularises only its convolutions).

    Example:
        >>> LightLinear(32, 10, k=8)(torch.zeros(4, 32)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self, in_features: int, out_features: int, k: int, bias: bool = True, l2: float = 0.0
    ) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"LightLinear: k must be an integer >= 1, got {k!r}")
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LightLinear: {name} must be an integer >= 1, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.k = k
        self.l2 = float(l2)
        # The reference scales each factor by sqrt(2/units) (He-style) at every call.
        self.scale = math.sqrt(2.0 / out_features)
        self.weight1 = nn.Parameter(torch.empty(in_features, k))
        self.weight2 = nn.Parameter(torch.empty(k, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"LightLinear expects inputs whose last dimension is {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        y = (x @ self.weight1) @ self.weight2 * (self.scale * self.scale)
        return y + self.bias if self.bias is not None else y

    def penalty(self) -> torch.Tensor:
        return self.l2 * (self.weight1.square().sum() + self.weight2.square().sum())

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}"
        return s + (", bias=False" if self.bias is None else "")
