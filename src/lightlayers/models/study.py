"""The chest X-ray study's models (LightLayers residual CNN, the published Conv2D CNN)."""

from __future__ import annotations

from torch import nn

from lightlayers.models._blocks import (
    Classifier,
    ConvFactory,
    ResidualBlock,
    bn,
    head,
    keras_init_,
    light_conv,
    plain_conv,
)
from lightlayers.models._registry import register_model
from lightlayers.models.interface import ModelInfo

STUDY_REF = "LightLayers chest X-ray study (pneumonia vs normal, Kermany et al. 2018)"
STUDY_WIDTHS = (8, 16, 32)


def _residual_net(
    conv: ConvFactory, num_classes: int, in_chans: int, widths=STUDY_WIDTHS, light_head_k=None
) -> Classifier:
    blocks, cin = [], in_chans
    for f in widths:
        blocks.append(ResidualBlock(cin, f, conv))
        cin = f
    model = Classifier(nn.Sequential(*blocks), head(cin, num_classes, light_head_k))
    keras_init_(model)
    return model


def _info(name: str, description: str, **kw) -> ModelInfo:
    return ModelInfo(
        name=name, family="study", num_classes=2, in_chans=3, input_size=224,
        reference=STUDY_REF, description=description, **kw,
    )


@register_model(
    "study-light-k{k}",
    _info("study-light-k{k}", "3 residual blocks of LightConv2d (f=8,16,32), GAP, Linear"),
    listed_k=range(1, 6),
)
def study_light(num_classes: int, in_chans: int, k: int, bias_init: str = "zeros",
                l2: float = 1e-4) -> Classifier:
    return _residual_net(light_conv(k, bias_init=bias_init, l2=l2), num_classes, in_chans)


@register_model(
    "study-residual-conv",
    _info("study-residual-conv", "the light model's residual topology with ordinary Conv2d"),
)
def study_residual_conv(num_classes: int, in_chans: int) -> Classifier:
    return _residual_net(plain_conv(), num_classes, in_chans)


# Three valid 3x3 convs (-6 px) then a 2x2 pool per stage: 50 px is the smallest input that
# leaves a 2x2 map for the third stage's pool.
STUDY_CONV_MIN_SIZE = 50


@register_model(
    "study-conv",
    _info(
        "study-conv",
        "the published Conv2D CNN: per f=8,16,32 3x[Conv3x3 valid, ReLU, BN], MaxPool; GAP, Linear",
        min_input_size=STUDY_CONV_MIN_SIZE,
    ),
)
def study_conv(num_classes: int, in_chans: int) -> Classifier:
    layers: list[nn.Module] = []
    cin = in_chans
    for f in STUDY_WIDTHS:
        for _ in range(3):
            layers += [nn.Conv2d(cin, f, 3), nn.ReLU(inplace=True), bn(f)]
            cin = f
        layers.append(nn.MaxPool2d(2))
    model = Classifier(nn.Sequential(*layers), nn.Linear(cin, num_classes), STUDY_CONV_MIN_SIZE)
    keras_init_(model)
    return model
