"""Frozen-backbone features, computed once per (data, backbone, weights) and cached on disk.

A frozen backbone in eval mode is a fixed function, so its features for a split never change:
the head can train on them for milliseconds an epoch instead of re-running the backbone.

The cache file is safetensors (tensors and string metadata only: reading it can never run
code, unlike a pickle). Every read is verified against its key, the splits asked for, the
shapes and dtypes it records and the values themselves; a file that fails is recomputed,
replaced atomically, and named in a :class:`~lightlayers.data.cache.CacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightlayers.data.cache import CacheWarning, cache_root
from lightlayers.train import autocast, synchronize

FORMAT = "lightlayers-features"
FORMAT_VERSION = "1"

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]


def feature_key(data_key: str, model_name: str, weights: str, size: int,
                loader_opts: dict[str, Any], amp: str | None) -> str:
    blob = json.dumps({"data": data_key, "model": model_name, "weights": weights, "size": size,
                       "loader": loader_opts, "amp": amp, "version": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def feature_cache_path(key: str) -> Path:
    return cache_root() / "features" / f"{key}.safetensors"


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


def read_features(path: Path, key: str, loaders: dict[str, Any]
                  ) -> tuple[Features | None, str | None]:
    """``(features, None)`` on the CPU, ``(None, why)`` when the file at ``path`` fails
    verification, or ``(None, None)`` when there is no file."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None, None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        return None, f"not a readable safetensors file ({e})"
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        return None, f"format {meta.get('format')!r} version {meta.get('version')!r}"
    if meta.get("key") != key:
        return None, f"it holds the features of key {meta.get('key')!r}"
    try:
        splits = json.loads(meta["splits"])
        shapes = json.loads(meta["shapes"])
    except (KeyError, ValueError) as e:
        return None, f"metadata without valid splits and shapes ({e})"
    if sorted(splits) != sorted(loaders) or not isinstance(shapes, dict):
        return None, f"splits {splits}, expected {sorted(loaders)}"
    expected = {f"{s}.{part}" for s in loaders for part in ("x", "y")}
    if set(tensors) != expected:
        return None, f"tensors {sorted(tensors)}, expected {sorted(expected)}"
    out: Features = {}
    width = None
    for split, loader in loaders.items():
        x, y = tensors[f"{split}.x"], tensors[f"{split}.y"]
        if x.dtype != torch.float32 or x.ndim < 2 or list(x.shape) != shapes.get(split):
            return None, f"{split} features are {x.dtype} {list(x.shape)}, recorded " \
                         f"float32 {shapes.get(split)}"
        if width is not None and x.shape[1:] != width:
            return None, f"{split} features are {list(x.shape[1:])} wide, another split's " \
                         f"{list(width)}"
        width = x.shape[1:]
        if y.dtype != torch.int64 or y.shape != (len(x),) or (len(y) and int(y.min()) < 0):
            return None, f"{split} labels are {y.dtype} {list(y.shape)}, expected " \
                         f"non-negative int64 ({len(x)},)"
        n = getattr(loader, "num_samples", None)
        if n is not None and len(y) != n:
            return None, f"{split} has {len(y)} rows, the split has {n} images"
        if not bool(torch.isfinite(x).all()):
            return None, f"{split} features hold non-finite values"
        out[split] = (x, y)
    return out, None


def write_features(path: Path, key: str, feats: Features) -> None:
    """Write ``feats`` to ``path`` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    tensors, shapes = {}, {}
    for split, (x, y) in feats.items():
        tensors[f"{split}.x"] = x.detach().float().cpu().contiguous()
        tensors[f"{split}.y"] = y.detach().to(torch.int64).cpu().contiguous()
        shapes[split] = list(x.shape)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "key": key,
            "splits": json.dumps(sorted(feats)), "shapes": json.dumps(shapes, sort_keys=True),
            "dtype": "float32", "label_dtype": "int64"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Earlier versions pickled the features to <key>.pt; that file is never read (loading a
    # pickle can run code), so it only takes space once its replacement is written.
    path.with_suffix(".pt").unlink(missing_ok=True)


def cached_features(key: str, backbone: torch.nn.Module, loaders: dict[str, Any],
                    device: torch.device, amp: bool,
                    on_replace: Callable[[str], None] | None = None,
                    ) -> tuple[Features, float, bool]:
    """Features per split, the seconds spent computing them (0 on a hit) and whether it hit.

    A cache file that fails verification is recomputed and replaced; the replacement is
    reported to ``on_replace`` (one line naming the file and why), else as a CacheWarning.
    """
    path = feature_cache_path(key)
    saved, problem = read_features(path, key, loaders)
    if saved is not None:
        return {k: (x.to(device), y.to(device)) for k, (x, y) in saved.items()}, 0.0, True
    synchronize(device)
    t0 = time.perf_counter()
    out = {name: compute_features(backbone, ld, device, amp) for name, ld in loaders.items()}
    synchronize(device)
    seconds = time.perf_counter() - t0
    write_features(path, key, out)
    if problem is not None:
        message = f"feature cache: replaced {path} ({problem})"
        if on_replace is not None:
            on_replace(message)
        else:
            warnings.warn(message, CacheWarning, stacklevel=2)
    return out, seconds, False
