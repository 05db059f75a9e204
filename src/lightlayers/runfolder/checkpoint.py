"""A trial's checkpoint: one float32 safetensors file per trial, never another trial's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lightlayers.outputs import write_atomic
from lightlayers.runfolder.store import StoreError

if TYPE_CHECKING:
    from torch import nn

    from lightlayers.spec import TrialSpec


def checkpoint_name(spec: TrialSpec, data_id: str) -> str:
    """One file per trial: the data's key is part of the name, so a trial on other data (or a
    rerun's) never shares or overwrites another trial's checkpoint."""
    data = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in data_id)
    return f"{spec.model}__seed{spec.seed}__{spec.protocol}__{data}.safetensors"


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, str]) -> float:
    """Float32 safetensors of the full state; returns its size in MB (10^6 bytes).

    A file already there is replaced only when it belongs to the same trial (an attempt that
    crashed before it was recorded); another trial's checkpoint is never overwritten. The
    file's mode follows the umask, as every other file of the run folder does.
    """
    from safetensors.torch import save

    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    if path.exists() and _checkpoint_trial(path) != metadata.get("trial"):
        raise StoreError(f"{path} already holds the checkpoint of another trial "
                         f"({_checkpoint_trial(path)}); it is kept. Use another --out folder")
    # safetensors' own save_file creates its file 0600 whatever the umask and follows a link
    # at its target; written through outputs.write_atomic, neither happens. The folder above
    # checkpoints/ is the run folder, whose links are refused too.
    write_atomic(path, save(state, metadata=metadata), root=path.parent.parent)
    return path.stat().st_size / 1e6


# SHA-256 of the files hashed by this process, by what identifies one version of a file: a
# file replaced or rewritten gets another inode, size, mtime or ctime, so it is hashed again.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of ``path``, hashed once per process while the file stays the same."""
    from lightlayers.models.weights import sha256_file

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = sha256_file(Path(path))
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key[3:]:
            _DIGESTS[key] = digest  # not a file that changed while it was read
    return digest


def _checkpoint_trial(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("trial")
    except Exception:  # unreadable: not a checkpoint of any recorded trial
        return None
