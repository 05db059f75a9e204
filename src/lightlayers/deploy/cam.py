"""Grad-CAM heatmaps as images: a map upsampled to the model's input and laid over the image
the model saw (decoded, resized and cropped as for training).

The maps themselves come from the exported file (see :mod:`lightlayers.deploy.graph`, checked
against Captum's ``LayerGradCam`` when the file was written); upsampling is Captum's
``LayerAttribution.interpolate`` (bilinear).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ALPHA", "COLORMAP", "DISPLAY_MIN", "labelled_png", "overlay", "peak", "upsample"]

ALPHA = 0.45  # weight of the heatmap over the image
COLORMAP = "jet"
DISPLAY_MIN = 224  # smaller inputs are shown enlarged to this side


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """(h, w) map -> (size, size), bilinear, as Captum upsamples layer attributions."""
    import torch

    from lightlayers.deploy.errors import require

    LayerAttribution = require("captum.attr").LayerAttribution

    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return LayerAttribution.interpolate(t, (size, size), "bilinear")[0, 0].numpy()


def peak(cam: np.ndarray, size: int) -> tuple[int, int]:
    """(row, col) of the upsampled map's maximum, in input pixels."""
    up = upsample(cam, size)
    r, c = np.unravel_index(int(np.argmax(up)), up.shape)
    return int(r), int(c)


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """``image`` uint8 (C, H, W) with the map ``cam`` (h, w) over it, as uint8 RGB
    (S, S, 3), S = max(H, DISPLAY_MIN). The map is scaled to its own maximum (a map of
    zeros, where no position raised the class score, shows the image only)."""
    from matplotlib import colormaps
    from PIL import Image

    side = max(image.shape[-1], DISPLAY_MIN)
    base = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    base_img = Image.fromarray(np.ascontiguousarray(base)).convert("RGB")
    rgb = np.asarray(base_img.resize((side, side), Image.Resampling.BILINEAR), np.float32)
    up = upsample(cam, side)
    top = float(up.max())
    if top <= 0:
        return rgb.astype(np.uint8)
    heat = colormaps[COLORMAP](np.clip(up / top, 0, 1))[..., :3] * 255
    weight = ALPHA * np.clip(up / top, 0, 1)[..., None] ** 0.5  # cold areas stay readable
    return (rgb * (1 - weight) + heat * weight).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` uint8 (H, W, 3) as a PNG file's bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def labelled_png(rgb: np.ndarray, title: str, map_side: int) -> bytes:
    """``rgb`` (an :func:`overlay`) as a PNG with ``title`` (the predicted class and its
    probability) above it and the heatmap's colour scale beside it."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.3), layout="constrained")
    ax = fig.subplots()
    ax.imshow(rgb)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"Grad-CAM, {map_side}x{map_side} map", fontsize=8)
    colorbar(fig, ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def colorbar(fig: Any, axes: Any) -> Any:
    """The heatmaps' scale beside ``axes``: each map is drawn relative to its own maximum."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[COLORMAP]), ax=axes,
                       shrink=0.8)
    bar.set_label("Grad-CAM, share of its maximum", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar
