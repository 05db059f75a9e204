"""Pretrained backbone weights: where they live, how they are fetched and checked.

torchvision names each ImageNet file ``<name>-<sha256 prefix>.pth`` and keeps it in torch's hub
cache (``$TORCH_HOME/hub/checkpoints``). Here a weights request (``"DEFAULT"``, a torchvision
weights name, ``"none"`` or a local file) is *resolved* once, before anything trains: the file
is found in the cache or downloaded (checksum-verified, with a progress bar), loaded through
torchvision's own builder (so its key fix-ups apply) and kept as the headless backbone's state
dict. Trials then build their model from that state, and Ray workers receive it from the driver,
so no trial ever downloads.

``LIGHTLAYERS_WEIGHTS_MIRROR`` (a URL prefix or folder, e.g. ``file:///shared/weights/``)
replaces torchvision's download host, for clusters whose nodes see a shared copy.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ResolvedWeights",
    "WeightsError",
    "download_weights",
    "hash_prefix",
    "hub_file",
    "is_file_spec",
    "official_weights",
    "sha256_file",
]

# torch.hub's convention: the file name carries the first digits of its SHA-256.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
DOWNLOAD_TIMEOUT_S = 60.0


class WeightsError(RuntimeError):
    """Pretrained weights could not be found, fetched, verified or loaded."""


@dataclass
class ResolvedWeights:
    """Weights ready to build a backbone from, with where they came from.

    ``state`` is the headless backbone's state dict (``None`` for random weights); ``label``
    names the weights in results ("ResNet18_Weights.IMAGENET1K_V1", a file path or "none").
    ``verified`` is True when the file's SHA-256 matches the prefix in its official name.
    """

    label: str
    state: dict[str, torch.Tensor] | None = None
    file: str | None = None
    sha256: str | None = None
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return self.state is not None

    def describe(self) -> dict[str, Any]:
        """What a trial records about its weights (no tensors)."""
        return {"weights": self.label, "weights_file": self.file,
                "weights_sha256": self.sha256, "weights_verified": self.verified}


def is_file_spec(spec: str) -> bool:
    """A weights request that names a local file rather than a torchvision weights name."""
    return spec.endswith((".pth", ".pt", ".safetensors")) or os.sep in spec or "/" in spec


def official_weights(builder: str, name: str = "DEFAULT") -> Any:
    """torchvision's weights enum member for ``builder`` (``DEFAULT`` or e.g. ``IMAGENET1K_V1``)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(builder)
    try:
        return enum[name]
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__])
        raise WeightsError(
            f"unknown weights {name!r} for {builder}; valid: {valid}, 'none', or a file path"
        ) from None


def hub_file(url: str) -> Path:
    """Where torch hub keeps the file of ``url`` (moved by ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def hash_prefix(url_or_name: str) -> str | None:
    m = _HASH_IN_NAME.search(os.path.basename(url_or_name))
    return m.group(1) if m else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str) -> str:
    """``url``, or the same file name under ``LIGHTLAYERS_WEIGHTS_MIRROR`` when that is set."""
    mirror = os.environ.get("LIGHTLAYERS_WEIGHTS_MIRROR", "").strip()
    if not mirror:
        return url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + os.path.basename(url)


def offline_hint(weights: Any, what: str) -> str:
    name = os.path.basename(weights.url)
    return (f"Fetch it where there is network with `lightlayers weights fetch {what}` (it goes "
            f"to {hub_file(weights.url)}; TORCH_HOME moves it), or place the file {name} (from "
            f"{weights.url}) there, or pass a local state dict with --weights PATH")


def download_weights(weights: Any, what: str, progress: bool = True) -> Path:
    """Download ``weights``' file into the hub cache, checking the SHA-256 prefix in its name.

    A failed or mismatching download leaves nothing behind (torch hub writes a ``.partial``
    file and moves it into place only after the check).
    """
    dst = hub_file(weights.url)
    url = download_url(weights.url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"downloading {weights} for {what}: {url} -> {dst}", file=sys.stderr)
    old_timeout = socket.getdefaulttimeout()
    # urllib waits forever by default; a stalled connection must end in an error.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix(weights.url), progress=progress)
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise WeightsError(
                f"the download of {os.path.basename(weights.url)} from {url} does not match its "
                f"checksum ({e}); nothing was kept. Try again, or check the mirror"
            ) from None
        raise WeightsError(f"could not download the {weights} weights for {what} "
                           f"({e}). {offline_hint(weights, what)}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"could not download the {weights} weights for {what} "
                           f"({reason}). Offline? {offline_hint(weights, what)}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
        for partial in dst.parent.glob(f"{dst.name}.*.partial"):
            partial.unlink(missing_ok=True)
    return dst


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` (tensors only, never pickled objects) or
    ``.safetensors`` file."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any decoding failure means the file is not a usable state dict
        raise WeightsError(
            f"cannot read weights file {path}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "Expected a PyTorch state dict (.pth/.pt) or a .safetensors file"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state "
                           "dict of tensors")
    return dict(state)
