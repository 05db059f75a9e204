"""LightLayers building blocks; importable without the benchmark harness."""

from lightlayers.layers.light_conv import LightConv2d
from lightlayers.layers.light_linear import LightLinear
from lightlayers.layers.penalty import light_penalty

__all__ = ["LightConv2d", "LightLinear", "light_penalty"]
