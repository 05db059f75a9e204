"""A trial's checkpoint: one float32 safetensors file per trial, never another trial's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from lightlayers.store import StoreError

if TYPE_CHECKING:
    from lightlayers.trial import TrialSpec


def checkpoint_name(spec: TrialSpec, data_id: str) -> str:
    """One file per trial: the data's key is part of the name, so a trial on other data (or a
    rerun's) never shares or overwrites another trial's checkpoint."""
    data = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in data_id)
    return f"{spec.model}__seed{spec.seed}__{spec.protocol}__{data}.safetensors"


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, str]) -> float:
    """Float32 safetensors of the full state; returns its size in MB (10^6 bytes).

    A file already there is replaced only when it belongs to the same trial (an attempt that
    crashed before it was recorded); another trial's checkpoint is never overwritten.
    """
    from safetensors.torch import save_file

    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and _checkpoint_trial(path) != metadata.get("trial"):
        raise StoreError(f"{path} already holds the checkpoint of another trial "
                         f"({_checkpoint_trial(path)}); it is kept. Use another --out folder")
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path.stat().st_size / 1e6


def _checkpoint_trial(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("trial")
    except Exception:  # unreadable: not a checkpoint of any recorded trial
        return None
