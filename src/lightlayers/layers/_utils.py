from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

BiasInit = Literal["zeros", "glorot"]


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return (int(value[0]), int(value[1]))


def same_padding(
    padding: str | int | tuple[int, int], kernel_size: tuple[int, int], layer: str
) -> tuple[int, int]:
    """Explicit padding for 'same'/'valid'/int, so every conv in the layer pads identically."""
    if padding == "same":
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(
                f"{layer}: padding='same' needs odd kernel sizes, got {kernel_size}; "
                "use an odd kernel or an explicit padding"
            )
        return (kernel_size[0] // 2, kernel_size[1] // 2)
    if padding == "valid":
        return (0, 0)
    if isinstance(padding, str):
        raise ValueError(f"{layer}: padding must be 'same', 'valid' or an int, got {padding!r}")
    if isinstance(padding, int):
        padding = (padding, padding)
    if len(padding) != 2 or not all(isinstance(p, int) and p >= 0 for p in padding):
        raise ValueError(f"{layer}: padding must be >= 0, got {padding!r}")
    return (int(padding[0]), int(padding[1]))


def init_bias(bias: torch.Tensor, how: BiasInit) -> None:
    if how == "zeros":
        nn.init.zeros_(bias)
    elif how == "glorot":
        # Keras glorot_uniform on a 1-D shape (n,) uses fan_in = fan_out = n.
        limit = math.sqrt(3.0 / bias.numel())
        nn.init.uniform_(bias, -limit, limit)
    else:
        raise ValueError(f"bias_init must be 'zeros' or 'glorot', got {how!r}")
