"""Frozen-backbone features, computed once per (data, backbone, weights) and cached on disk.

A frozen backbone in eval mode is a fixed function, so its features for a split never change:
the head can train on them for milliseconds an epoch instead of re-running the backbone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from lightlayers.data.cache import cache_root
from lightlayers.train import autocast, synchronize


def feature_key(data_key: str, model_name: str, weights: str, size: int,
                loader_opts: dict[str, Any], amp: str | None) -> str:
    blob = json.dumps({"data": data_key, "model": model_name, "weights": weights, "size": size,
                       "loader": loader_opts, "amp": amp, "version": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@torch.no_grad()
def compute_features(backbone: torch.nn.Module, loader, device: torch.device,
                     amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.eval()
    feats, labels = [], []
    for x, y in loader:
        with autocast(device, amp):
            feats.append(backbone(x).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def cached_features(key: str, backbone: torch.nn.Module, loaders: dict[str, Any],
                    device: torch.device, amp: bool
                    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, bool]:
    """Features per split, the seconds spent computing them (0 on a hit) and whether it hit."""
    path = cache_root() / "features" / f"{key}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            if set(saved) == set(loaders):
                return {k: (v["x"], v["y"]) for k, v in saved.items()}, 0.0, True
        except (OSError, RuntimeError, KeyError):
            pass  # an unreadable entry is recomputed and overwritten
    synchronize(device)
    t0 = time.perf_counter()
    out = {name: compute_features(backbone, ld, device, amp) for name, ld in loaders.items()}
    synchronize(device)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save({k: {"x": x.cpu(), "y": y.cpu()} for k, (x, y) in out.items()}, tmp)
    os.replace(tmp, path)
    return out, seconds, False


def feature_cache_path(key: str) -> Path:
    return cache_root() / "features" / f"{key}.pt"
