"""Transfer learning: a torchvision ImageNet backbone, frozen, with a new linear head.

The architecture, the weights and the preprocessing all come from torchvision: the model is
built the way its pretrained weights require (InceptionV3 with its auxiliary classifier, then
dropped), and inputs are resized, cropped and normalised as the weights' own ``transforms()``
say, so a newly added backbone cannot drift from torchvision. Weights are resolved once
(:mod:`lightlayers.models.weights`) and every trial builds from the resolved state.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import nn

from lightlayers.models._registry import register_model
from lightlayers.models.interface import ClassifierBase, ModelInfo, Preprocess
from lightlayers.models.weights import (
    ResolvedWeights,
    WeightsError,
    download_weights,
    hash_prefix,
    hub_file,
    is_file_spec,
    load_state_file,
    official_weights,
    offline_hint,
    sha256_file,
)

__all__ = ["BACKBONES", "TransferModel", "WeightsError", "backbone_preprocess",
           "backbone_stages", "build_backbone", "resolve_weights"]

# The torchvision builders offered as `transfer-<name>`; everything else about them (features,
# input size, normalisation, weights files) is read from torchvision.
BACKBONES: tuple[str, ...] = (
    "inception_v3", "resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "densenet121",
)


@functools.cache
def backbone_preprocess(backbone: str, weights: str = "DEFAULT") -> Preprocess:
    """Resize, crop, mean and std from the weights' own ``transforms()``."""
    t = official_weights(backbone, weights).transforms()
    return Preprocess(crop_size=int(t.crop_size[0]), resize_size=int(t.resize_size[0]),
                      mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
                      interpolation=str(t.interpolation.value))


def _arch(backbone: str, pretrained: bool) -> tuple[nn.Module, int]:
    """torchvision's architecture as its pretrained weights need it, without its classifiers;
    returns it and its number of features."""
    import torchvision.models as tvm

    kwargs: dict[str, Any] = {}
    if backbone == "inception_v3":
        # What torchvision's inception_v3 sets for its ImageNet weights: the auxiliary
        # classifier (its keys are in the file) and inputs re-normalised to [-1, 1].
        kwargs = {"aux_logits": True, "transform_input": pretrained,
                  "init_weights": not pretrained}
    return _headless(getattr(tvm, backbone)(weights=None, **kwargs))


def _headless(model: nn.Module) -> tuple[nn.Module, int]:
    """Drop the ImageNet classifier (every torchvision classifier's last child) and, for
    InceptionV3, the auxiliary one, which only exists for ImageNet training."""
    if getattr(model, "AuxLogits", None) is not None:
        # Plain attributes of torchvision's Inception3, set as such.
        setattr(model, "aux_logits", False)  # noqa: B010
        setattr(model, "AuxLogits", None)  # noqa: B010
    name, head = list(model.named_children())[-1]
    linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
    setattr(model, name, nn.Identity())
    return model, linear.in_features


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` (a full torchvision state dict or a headless one) into the
    headless ``model``, listing missing, unexpected and mis-shaped keys on a mismatch."""
    own = model.state_dict()
    heads = {k.split(".", 1)[0] for k in state} - {k.split(".", 1)[0] for k in own}
    # The ImageNet classifier and InceptionV3's auxiliary one are legitimately dropped.
    dropped = {"fc", "classifier", "AuxLogits"} & heads
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in dropped}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{name} ({len(items)}): {show(items)}" for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("mis-shaped keys", misshaped)) if items]
        raise WeightsError(f"weights {source} do not fit this backbone: " + "; ".join(parts))
    model.load_state_dict(state)


def resolve_weights(backbone: str, weights: str | os.PathLike | ResolvedWeights | None,
                    *, download: bool = True, progress: bool = True) -> ResolvedWeights:
    """Find (or download), check and load the weights ``weights`` names for ``backbone``.

    ``weights``: ``None``/``"none"`` (random), ``"DEFAULT"`` or a torchvision weights name (the
    hub cache, else a download unless ``download=False``), a local ``.pth``/``.safetensors``
    state dict, or an already resolved one. Raises :class:`WeightsError` with what to do.
    """
    if isinstance(weights, ResolvedWeights):
        return weights
    what = f"transfer-{backbone}"
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return ResolvedWeights("none")
    spec = os.fspath(weights)
    if isinstance(weights, os.PathLike) or is_file_spec(spec):
        from pathlib import Path

        path = Path(spec).expanduser()
        model, _ = _arch(backbone, pretrained=True)
        load_backbone_state(model, load_state_file(path), str(path))
        return ResolvedWeights(str(path), model.state_dict(), str(path), sha256_file(path))
    w = official_weights(backbone, spec)
    path = hub_file(w.url)
    if not path.is_file():
        if not download:
            raise WeightsError(f"the {w} weights for {what} are not in the cache ({path}). "
                               + offline_hint(w, what))
        download_weights(w, what, progress)
    digest = sha256_file(path)
    prefix = hash_prefix(w.url) or ""
    verified = digest.startswith(prefix)
    import torchvision.models as tvm

    try:
        # torchvision's own loading (and its key fix-ups, e.g. DenseNet's); the file is cached,
        # so nothing is downloaded here.
        full = getattr(tvm, backbone)(weights=w, progress=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsError(
            f"cannot use the cached {w} weights at {path} ({type(e).__name__}: {first}); delete "
            f"the file and run `lightlayers weights fetch {what}`, or pass --weights PATH"
        ) from None
    model, _ = _headless(full)
    notes = [] if verified else [
        f"{path} does not match the SHA-256 prefix {prefix} in its official name (it is "
        f"{digest[:12]}...): used as is; delete it and run `lightlayers weights fetch {what}` "
        "for torchvision's file"]
    return ResolvedWeights(str(w), model.state_dict(), str(path), digest, verified, notes)


def build_backbone(backbone: str, weights: str | os.PathLike | ResolvedWeights | None
                   ) -> tuple[nn.Module, int, ResolvedWeights]:
    """Headless backbone, its number of features and the weights it carries."""
    resolved = resolve_weights(backbone, weights)
    model, features = _arch(backbone, pretrained=resolved.pretrained)
    if resolved.state is not None:
        model.load_state_dict(resolved.state)  # the state of this very architecture
    return model, features, resolved


class TransferModel(ClassifierBase):
    """A headless backbone followed by ``Linear(features, num_classes)``.

    ``finetune``: ``"none"`` (default) freezes the whole backbone; ``"last-N"`` trains its last
    N stages; ``"all"`` trains everything. Frozen stages stay in eval mode even when the model
    is put in train mode, so their BatchNorm statistics never move; trained stages update theirs
    as usual. A fully frozen backbone is a fixed function, so its features can be cached.
    """

    def __init__(self, backbone: nn.Module, features: int, num_classes: int,
                 weights: ResolvedWeights, preprocess: Preprocess,
                 finetune: str = "none") -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = features
        self.head = nn.Linear(features, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.weights = weights.label
        self._weights_info = weights.describe()
        self.preprocess = preprocess
        self.finetune = finetune
        stages = backbone_stages(backbone)
        if finetune == "none":
            trained: list[nn.Module] = []
        elif finetune == "all":
            trained = stages
        else:
            n = _parse_last_n(finetune, len(stages))
            trained = stages[len(stages) - n:]
        self._frozen_stages = [m for m in stages if not any(m is t for t in trained)]
        for m in self._frozen_stages:
            m.requires_grad_(False)
        self._trains_backbone = bool(trained)
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        return not self._trains_backbone

    def weights_info(self) -> dict[str, object]:
        return dict(self._weights_info)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        for m in self._frozen_stages:
            m.eval()
        return self

    def param_groups(self, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
        """The head at ``lr``; trained backbone stages at ``lr * backbone_lr_scale``."""
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        trained = [p for p in self.backbone.parameters() if p.requires_grad]
        if trained:
            groups.append({"params": trained, "lr": lr * backbone_lr_scale})
        return groups

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages in forward order: the blocks of ``features`` (MobileNet,
    EfficientNet, DenseNet) or its top-level children (ResNet, Inception), parameter-free
    ones (pooling, dropout) left out."""
    features = getattr(backbone, "features", None)
    root = features if isinstance(features, nn.Sequential) else backbone
    return [m for m in root.children() if any(True for _ in m.parameters())]


def _parse_last_n(finetune: str, n_stages: int) -> int:
    prefix = "last-"
    if finetune.startswith(prefix) and finetune[len(prefix):].isdigit():
        n = int(finetune[len(prefix):])
        if 1 <= n <= n_stages:
            return n
        raise ValueError(f"finetune={finetune!r}: this backbone has {n_stages} stages; "
                         f"use last-1 .. last-{n_stages} or 'all'")
    raise ValueError(f"finetune must be 'none', 'all' or 'last-N', got {finetune!r}")


def _make_builder(backbone: str):
    def build(num_classes: int, in_chans: int,
              weights: str | os.PathLike | ResolvedWeights | None = "DEFAULT",
              finetune: str = "none") -> TransferModel:
        if in_chans != 3:
            raise ValueError(
                f"transfer-{backbone} takes 3-channel input (grey images are replicated to 3 "
                f"channels by the data pipeline), got in_chans={in_chans}"
            )
        model, features, resolved = build_backbone(backbone, weights)
        named = isinstance(weights, str) and not is_file_spec(weights) \
            and weights.lower() != "none"
        preprocess = backbone_preprocess(backbone, str(weights) if named else "DEFAULT")
        return TransferModel(model, features, num_classes, resolved, preprocess, finetune)

    return build


def _make_info(backbone: str):
    def info() -> ModelInfo:
        default = official_weights(backbone)
        pre = backbone_preprocess(backbone)
        return ModelInfo(
            name=f"transfer-{backbone}", family="transfer", num_classes=2, in_chans=3,
            input_size=pre.crop_size or 224, reference=f"torchvision {default}",
            description=f"frozen torchvision {backbone} + Linear(features -> classes)",
            min_input_size=int(default.meta.get("min_size", (1, 1))[0]),
            extra={"preprocess": pre, "takes_weights": True},
        )

    return info


for _name in BACKBONES:
    register_model(f"transfer-{_name}", _make_info(_name))(_make_builder(_name))


def takes_weights(name: str) -> bool:
    """Whether ``name`` is a model built from pretrained weights (the ``weights`` option)."""
    from lightlayers.models._registry import model_info

    return bool(model_info(name).extra.get("takes_weights"))


def resolve_model_weights(name: str, weights: str | os.PathLike | ResolvedWeights | None,
                          *, download: bool = True, progress: bool = True) -> ResolvedWeights:
    """:func:`resolve_weights` for the transfer model ``name`` (``transfer-<backbone>``)."""
    return resolve_weights(_backbone_of(name), weights, download=download, progress=progress)


def _backbone_of(name: str) -> str:
    backbone = name.removeprefix("transfer-")
    if backbone not in BACKBONES:
        raise WeightsError(f"{name} takes no pretrained weights; transfer models: "
                           + ", ".join(f"transfer-{b}" for b in BACKBONES))
    return backbone


def fetch(name: str, weights: str = "DEFAULT", progress: bool = True) -> ResolvedWeights:
    """Download (if needed) and verify the weights of the transfer model ``name``."""
    backbone = _backbone_of(name)
    w = official_weights(backbone, weights)
    path = hub_file(w.url)
    if not path.is_file() or not sha256_file(path).startswith(hash_prefix(w.url) or ""):
        # Missing, or a damaged or foreign file under the official name: the download replaces
        # it only once the new file has passed the checksum.
        download_weights(w, name, progress)
    return resolve_weights(backbone, weights, download=False, progress=progress)
