"""LightConv2d computed faster on the CPU, with the reference's math.

PyTorch runs CPU convolutions through oneDNN, which vectorises over channels and handles the
layer's thin convolutions badly (measured with torch.profiler; see docs/performance.md):

- A 1x1 LightConv2d is two matmuls over the channel axis: two ``addmm`` on the ``(N*H*W, C)``
  rows of a channels-last tensor, or two batched ``baddbmm`` on the ``(C, H*W)`` planes of a
  contiguous one, replace two oneDNN convolutions that cost 2-7x more.
- With ``k = 1`` the one-channel intermediate leaves most of oneDNN's vector lanes empty; on a
  channels-last tensor, padding the intermediate with zero channels (zero rows of ``W1`` and
  ``b1``, zero input channels of ``W2``) up to :data:`MIN_MID` makes both convolutions faster
  although they do more arithmetic (k = 2, 3 and contiguous tensors were measured no faster).
  The padded channels are ``relu(0) = 0`` and meet zero weights, so the output and every
  gradient of the real weights are unchanged (up to float summation order); the padding is
  built from the parameters on every call, so autograd drops the padded part of the gradient.

Both are exact rewrites; tests/test_speed_paths.py checks them against the two-convolution
formula, forward and backward. Under torch.compile the plain convolutions were measured faster,
so ``LightConv2d(impl="auto")`` uses this only in eager mode on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MIN_MID", "light_conv2d_fast"]

# Intermediate width a k = 1 layer is padded to (4 measured faster than 1, 8 and 16).
MIN_MID = 4


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
    k = weight1.shape[0]
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if weight1.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0):
        if channels_last:
            return _pointwise_channels_last(x, weight1, bias1, weight2, bias2)
        if x.is_contiguous():
            return _pointwise_contiguous(x, weight1, bias1, weight2, bias2)
    if k == 1 and channels_last:
        extra = MIN_MID - k
        weight1 = F.pad(weight1, (0, 0, 0, 0, 0, 0, 0, extra))
        bias1 = None if bias1 is None else F.pad(bias1, (0, extra))
        weight2 = F.pad(weight2, (0, 0, 0, 0, 0, extra))
    h = F.relu(F.conv2d(x, weight1, bias1, stride, padding))
    return F.conv2d(h, weight2, bias2, 1, padding)


def _pointwise_channels_last(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
) -> torch.Tensor:
    n, c, h, w = x.shape
    k, f = weight1.shape[0], weight2.shape[0]
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: x is channels-last
    w1, w2 = weight1.reshape(k, c).t(), weight2.reshape(f, k).t()
    mid = rows @ w1 if bias1 is None else torch.addmm(bias1, rows, w1)
    mid = F.relu(mid)
    out = mid @ w2 if bias2 is None else torch.addmm(bias2, mid, w2)
    # (N, C, H, W) sizes over channels-last memory, like the convolution it replaces.
    return out.view(n, h, w, f).permute(0, 3, 1, 2)


def _pointwise_contiguous(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
) -> torch.Tensor:
    n, c, h, w = x.shape
    k, f = weight1.shape[0], weight2.shape[0]
    planes = x.reshape(n, c, h * w)  # a view: x is contiguous
    # The weights broadcast over the batch as expanded views (no copies); their gradients are
    # summed over the batch by autograd.
    w1, w2 = weight1.reshape(1, k, c).expand(n, k, c), weight2.reshape(1, f, k).expand(n, f, k)
    zero = x.new_zeros(())
    b1 = zero if bias1 is None else bias1.reshape(k, 1)
    b2 = zero if bias2 is None else bias2.reshape(f, 1)
    mid = F.relu(torch.baddbmm(b1, w1, planes))
    return torch.baddbmm(b2, w2, mid).view(n, f, h, w)
