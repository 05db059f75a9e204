"""LightConv2d: the convolution layer of LightLayers (Jha et al. 2021)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightlayers.layers._light_fast import light_conv2d_fast
from lightlayers.layers._utils import BiasInit, init_bias, pair, same_padding

__all__ = ["LightConv2d"]

Impl = Literal["auto", "reference", "fast"]
IMPLS: tuple[str, ...] = ("auto", "reference", "fast")


class LightConv2d(nn.Module):
    """Two chained convolutions with a ReLU between them, as in the LightLayers reference code.

    ``y = conv(relu(conv(x, W1) + b1), W2) + b2`` with ``W1: k x C_in x kh x kw`` and
    ``W2: C_out x k x kh x kw``. This is *not* a factorisation of one kernel: a 3x3 layer sees
    a 5x5 receptive field. Parameters: ``kh*kw*k*(C_in + C_out) + k + C_out`` (with bias).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (the reference's ``filters``).
        kernel_size: int or (kh, kw), used by both convolutions.
        k: rank hyper-parameter (channels between the two convolutions), >= 1.
        stride: stride of the first convolution (the second always uses 1).
        padding: ``"same"`` (odd kernels only, the reference's choice), ``"valid"`` or an
            int / pair applied to both convolutions.
        bias: learn ``b1`` and ``b2``.
        bias_init: ``"zeros"`` (default) or ``"glorot"``, the reference's accidental
            U(-sqrt(3/n), sqrt(3/n)).
        l2: coefficient of the reference's L2 penalty on ``W1`` and ``W2``; see :meth:`penalty`.
        impl: how the forward is computed, always with the same math. ``"reference"``: the two
            convolutions as written. ``"fast"``:
            :func:`~lightlayers.layers._light_fast.light_conv2d_fast` (1x1 layers on
            contiguous inputs as batched matmuls; other layers as the reference).
            ``"auto"`` (default): ``"fast"`` on the CPU in eager mode, where it was measured
            faster; ``"reference"`` on other devices, under ``torch.compile`` (measured faster
            there) and while tracing or exporting, so exported graphs hold the plain formula.

    Example:
        >>> layer = LightConv2d(3, 8, 3, k=2)
        >>> layer(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 8, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        k: int,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = "same",
        bias: bool = True,
        bias_init: BiasInit = "zeros",
        l2: float = 1e-4,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"LightConv2d: k must be an integer >= 1, got {k!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LightConv2d: {name} must be an integer >= 1, got {value!r}")
        if l2 < 0:
            raise ValueError(f"LightConv2d: l2 must be >= 0, got {l2!r}")
        if impl not in IMPLS:
            raise ValueError(f"LightConv2d: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.impl = impl
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.k = k
        self.stride = pair(stride, "stride")
        self.padding = same_padding(padding, self.kernel_size, "LightConv2d")
        self.bias_init = bias_init
        self.l2 = float(l2)
        kh, kw = self.kernel_size
        self.weight1 = nn.Parameter(torch.empty(k, in_channels, kh, kw))
        self.weight2 = nn.Parameter(torch.empty(out_channels, k, kh, kw))
        if bias:
            self.bias1 = nn.Parameter(torch.empty(k))
            self.bias2 = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias1", None)
            self.register_parameter("bias2", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)
        if self.bias1 is not None:
            init_bias(self.bias1, self.bias_init)
            init_bias(self.bias2, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"LightConv2d expects input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if self._use_fast(x):
            return light_conv2d_fast(x, self.weight1, self.bias1, self.weight2, self.bias2,
                                     self.stride, self.padding)
        h = F.relu(F.conv2d(x, self.weight1, self.bias1, self.stride, self.padding))
        return F.conv2d(h, self.weight2, self.bias2, 1, self.padding)

    def _use_fast(self, x: torch.Tensor) -> bool:
        if self.impl != "auto":
            return self.impl == "fast"
        return (x.device.type == "cpu" and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())

    def penalty(self) -> torch.Tensor:
        """The reference's L2 term ``l2 * (sum W1^2 + sum W2^2)``, to add to the loss."""
        return self.l2 * (self.weight1.square().sum() + self.weight2.square().sum())

    def receptive_field(self) -> tuple[int, int]:
        kh, kw = self.kernel_size
        return (2 * kh - 1, 2 * kw - 1)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"k={self.k}, stride={self.stride}, padding={self.padding}"
        )
        if self.bias1 is None:
            s += ", bias=False"
        if self.bias_init != "zeros":
            s += f", bias_init={self.bias_init!r}"
        if not math.isclose(self.l2, 1e-4):
            s += f", l2={self.l2}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s
