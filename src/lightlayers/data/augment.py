"""Augmentation of whole batches on the training device, with seeded parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise per image; everything is off by default.

    Args:
        hflip: flip left-right with probability 0.5.
        rotate_deg: rotate by an angle drawn from [-rotate_deg, rotate_deg] degrees.
        translate: shift by up to this fraction of the image side, in x and in y.
        scale: zoom by a factor drawn from [1 - scale, 1 + scale].
        brightness: multiply pixel values by a factor from [1 - brightness, 1 + brightness].
        contrast: scale deviations from each image's mean by [1 - contrast, 1 + contrast].

    Example: ``AugmentConfig(hflip=True, rotate_deg=10, translate=0.05)``.
    """

    hflip: bool = False
    rotate_deg: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hflip":
                if not isinstance(value, bool):
                    raise TypeError(f"AugmentConfig.hflip must be a bool, got {value!r}")
            elif not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentConfig.{f.name} must be a number >= 0, got {value!r}")
        for name in ("scale", "brightness", "contrast"):
            if getattr(self, name) >= 1:
                raise ValueError(f"AugmentConfig.{name} must be < 1, got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return any(bool(getattr(self, f.name)) for f in fields(self))


def _uniform(n: int, half_width: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # Drawn on the CPU generator so the same seed gives the same images on every device.
    return ((torch.rand(n, generator=gen) * 2 - 1) * half_width).to(device)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment float images (B, C, H, W) with values in [0, 1]; returns a new tensor in [0, 1]."""
    b, dev = x.shape[0], x.device
    if cfg.hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.rotate_deg or cfg.translate or cfg.scale:
        angle = _uniform(b, math.radians(cfg.rotate_deg), gen, dev)
        zoom = 1 + _uniform(b, cfg.scale, gen, dev)
        # affine_grid maps output to input coordinates in [-1, 1] (a side spans 2).
        shift = torch.stack([_uniform(b, 2 * cfg.translate, gen, dev) for _ in range(2)], 1)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.brightness:
        x = x * (1 + _uniform(b, cfg.brightness, gen, dev)).to(x.dtype)[:, None, None, None]
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        factor = (1 + _uniform(b, cfg.contrast, gen, dev)).to(x.dtype)[:, None, None, None]
        x = (x - mean) * factor + mean
    return x.clamp_(0, 1) if (cfg.brightness or cfg.contrast) else x
