"""Building blocks shared by the study and paper models, with Keras-equivalent defaults."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lightlayers.layers import LightConv2d, LightLinear
from lightlayers.models.interface import ClassifierBase

# Keras BatchNormalization defaults: momentum 0.99 (PyTorch's convention is 1 - that) and eps 1e-3.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3

ConvFactory = Callable[[int, int, int], nn.Module]


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def keras_init_(module: nn.Module) -> None:
    """Glorot-uniform kernels and zero biases for plain Conv2d/Linear, as Keras does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def light_conv(k: int, **kw) -> ConvFactory:
    return lambda cin, cout, ks: LightConv2d(cin, cout, ks, k=k, **kw)


def plain_conv(padding: str = "same") -> ConvFactory:
    return lambda cin, cout, ks: nn.Conv2d(
        cin, cout, ks, padding=ks // 2 if padding == "same" else 0
    )


def separable_conv() -> ConvFactory:
    """Keras SeparableConv2D: depthwise kxk without bias, then pointwise 1x1 with bias."""
    return lambda cin, cout, ks: nn.Sequential(
        nn.Conv2d(cin, cin, ks, padding=ks // 2, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1),
    )


class ResidualBlock(nn.Module):
    """The study's block: conv-BN-ReLU-conv-BN + (1x1 conv-BN shortcut), ReLU, 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3)
        self.bn2 = bn(cout)
        self.shortcut = conv(cin, cout, 1)
        self.bn_shortcut = bn(cout)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.pool(F.relu(y + self.bn_shortcut(self.shortcut(x))))


def conv_bn_relu(cin: int, cout: int, conv: ConvFactory) -> list[nn.Module]:
    return [conv(cin, cout, 3), bn(cout), nn.ReLU(inplace=True)]


class Classifier(ClassifierBase):
    """Feature stages, global average pooling and a head that returns logits."""

    def __init__(self, stages: nn.Module, head: nn.Module, min_input_size: int = 1) -> None:
        super().__init__()
        self.stages = stages
        self.head = head
        self.num_features = _in_features(head)
        self.min_input_size = min_input_size
        self._warned = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            # Valid-padded topologies (study-conv) cannot shrink a small image further; pad it
            # with zeros to the smallest size the published layer list accepts.
            if not self._warned and not torch.jit.is_tracing():
                warnings.warn(
                    f"{type(self).__name__}: input {h}x{w} is below this model's minimum "
                    f"{self.min_input_size}x{self.min_input_size}; zero-padding it",
                    stacklevel=2,
                )
                self._warned = True
            ph, pw = max(0, self.min_input_size - h), max(0, self.min_input_size - w)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(x), 1), 1)


def _in_features(head: nn.Module) -> int:
    return int(cast(Any, head).in_features)  # nn.Linear and LightLinear alike


def head(cin: int, num_classes: int, light_k: int | None = None) -> nn.Module:
    return LightLinear(cin, num_classes, k=light_k) if light_k else nn.Linear(cin, num_classes)
