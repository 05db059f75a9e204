"""The LightLayers paper's MNIST / Fashion-MNIST and CIFAR models (Jha et al. 2021)."""

from __future__ import annotations

from torch import nn

from lightlayers.models._blocks import (
    Classifier,
    ConvFactory,
    conv_bn_relu,
    head,
    keras_init_,
    light_conv,
    plain_conv,
    separable_conv,
)
from lightlayers.models._registry import register_model
from lightlayers.models.interface import ModelInfo
from lightlayers.models.study import _residual_net

PAPER_REF = "Jha et al. 2021, LightLayers: Parameter Efficient Dense and Convolutional Layers"
MNIST_WIDTHS = (8, 16, 32)
CIFAR_WIDTHS = (16, 32, 64)
HEAD_K = 8  # the paper's LightDense rank in every published model


def _mnist_net(conv: ConvFactory, num_classes: int, in_chans: int, head_k: int | None):
    layers: list[nn.Module] = []
    cin = in_chans
    for f in MNIST_WIDTHS:
        layers += conv_bn_relu(cin, f, conv) + conv_bn_relu(f, f, conv) + [nn.MaxPool2d(2)]
        cin = f
    model = Classifier(nn.Sequential(*layers), head(cin, num_classes, head_k))
    keras_init_(model)
    return model


def _mnist_info(name: str, description: str) -> ModelInfo:
    return ModelInfo(name=name, family="paper", num_classes=10, in_chans=1, input_size=28,
                     reference=PAPER_REF, description=description)


def _cifar_info(name: str, description: str) -> ModelInfo:
    return ModelInfo(name=name, family="paper-cifar", num_classes=10, in_chans=3, input_size=32,
                     reference=PAPER_REF, description=description)


@register_model(
    "paper-light-k{k}",
    _mnist_info("paper-light-k{k}", "3x[LightConv-BN-ReLU]x2 + pool stages, GAP, LightLinear k=8"),
    listed_k=range(1, 7),
)
def paper_light(num_classes: int, in_chans: int, k: int, bias_init: str = "zeros",
                l2: float = 1e-4, head_k: int = HEAD_K) -> Classifier:
    return _mnist_net(light_conv(k, bias_init=bias_init, l2=l2), num_classes, in_chans, head_k)


@register_model("paper-conv", _mnist_info("paper-conv", "paper MNIST layout with Conv2d 3x3"))
def paper_conv(num_classes: int, in_chans: int) -> Classifier:
    return _mnist_net(plain_conv(), num_classes, in_chans, None)


@register_model(
    "paper-separable", _mnist_info("paper-separable", "paper MNIST layout with SeparableConv2d")
)
def paper_separable(num_classes: int, in_chans: int) -> Classifier:
    return _mnist_net(separable_conv(), num_classes, in_chans, None)


@register_model(
    "paper-cifar-light-k{k}",
    _cifar_info("paper-cifar-light-k{k}", "study residual blocks f=16,32,64, LightLinear k=8"),
    listed_k=range(1, 6),
)
def paper_cifar_light(num_classes: int, in_chans: int, k: int, bias_init: str = "zeros",
                      l2: float = 1e-4, head_k: int = HEAD_K) -> Classifier:
    return _residual_net(light_conv(k, bias_init=bias_init, l2=l2), num_classes, in_chans,
                         CIFAR_WIDTHS, light_head_k=head_k)


@register_model(
    "paper-cifar-conv", _cifar_info("paper-cifar-conv", "residual f=16,32,64 with Conv2d")
)
def paper_cifar_conv(num_classes: int, in_chans: int) -> Classifier:
    return _residual_net(plain_conv(), num_classes, in_chans, CIFAR_WIDTHS)


@register_model(
    "paper-cifar-separable",
    _cifar_info("paper-cifar-separable", "residual f=16,32,64 with SeparableConv2d"),
)
def paper_cifar_separable(num_classes: int, in_chans: int) -> Classifier:
    return _residual_net(separable_conv(), num_classes, in_chans, CIFAR_WIDTHS)
