"""LightConv2d computed faster on the CPU, with the reference's math.

PyTorch runs CPU convolutions through oneDNN, which vectorises over channels and handles the
layer's thin convolutions badly (measured with torch.profiler; see docs/performance.md). A 1x1
LightConv2d is two matmuls over the channel axis: two batched ``baddbmm`` on the ``(C, H*W)``
planes of a contiguous (NCHW) tensor replace two oneDNN convolutions that were measured 1.3-3x
slower for the study's layer shapes. 3x3 layers keep oneDNN: rewrites of them as matmuls over
shifted copies, as depthwise convolutions, or with the k-channel intermediate zero-padded were
all measured slower or no faster in training (docs/performance.md).

The rewrite is exact up to float summation order; tests/test_speed_paths.py checks it against
the two-convolution formula, forward and backward. Under torch.compile the plain convolutions
were measured faster, so ``LightConv2d(impl="auto")`` uses this only in eager mode on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["light_conv2d_fast"]


def light_conv2d_fast(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """``conv(relu(conv(x, W1) + b1), W2) + b2`` as :class:`LightConv2d` defines it."""
    if (weight1.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
            and x.is_contiguous()):
        return _pointwise(x, weight1, bias1, weight2, bias2)
    h = F.relu(F.conv2d(x, weight1, bias1, stride, padding))
    return F.conv2d(h, weight2, bias2, 1, padding)


def _pointwise(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
) -> torch.Tensor:
    n, c, h, w = x.shape
    k, f = weight1.shape[0], weight2.shape[0]
    planes = x.reshape(n, c, h * w)  # a view: x is contiguous
    # The weights broadcast over the batch as expanded views (no copies); autograd sums their
    # gradients over the batch.
    w1, w2 = weight1.reshape(1, k, c).expand(n, k, c), weight2.reshape(1, f, k).expand(n, f, k)
    zero = x.new_zeros(())
    b1 = zero if bias1 is None else bias1.reshape(k, 1)
    b2 = zero if bias2 is None else bias2.reshape(f, 1)
    mid = F.relu(torch.baddbmm(b1, w1, planes))
    return torch.baddbmm(b2, w2, mid).view(n, f, h, w)
