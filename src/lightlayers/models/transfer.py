"""Transfer learning: a torchvision ImageNet backbone, frozen, with a new linear head."""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightlayers.models._registry import ModelInfo, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    builder: str  # function name in torchvision.models
    head_attr: str  # attribute holding the ImageNet classifier, replaced by Identity
    features: int
    input_size: int
    build_kwargs: dict[str, Any] = field(default_factory=dict)


BACKBONES: dict[str, Backbone] = {
    # aux_logits=False: the auxiliary classifier only exists for ImageNet training; without it
    # torchvision's headless InceptionV3 has 21,785,568 parameters.
    "inception_v3": Backbone("inception_v3", "fc", 2048, 299,
                             {"aux_logits": False, "init_weights": True}),
    "resnet18": Backbone("resnet18", "fc", 512, 224),
    "resnet50": Backbone("resnet50", "fc", 2048, 224),
    "mobilenet_v3_small": Backbone("mobilenet_v3_small", "classifier", 576, 224),
    "mobilenet_v3_large": Backbone("mobilenet_v3_large", "classifier", 960, 224),
    "efficientnet_b0": Backbone("efficientnet_b0", "classifier", 1280, 224),
    "densenet121": Backbone("densenet121", "classifier", 1024, 224),
}


class WeightsError(RuntimeError):
    """Pretrained weights could not be found, fetched or loaded."""


class TransferModel(nn.Module):
    """A headless backbone followed by ``Linear(features, num_classes)``.

    ``finetune``: ``"none"`` (default) freezes the whole backbone; ``"last-N"`` trains its last
    N stages; ``"all"`` trains everything. Frozen stages stay in eval mode even when the model
    is put in train mode, so their BatchNorm statistics never move; trained stages update theirs
    as usual. A fully frozen backbone is a fixed function, so its features can be cached.
    """

    def __init__(self, backbone: nn.Module, features: int, num_classes: int,
                 weights: str, finetune: str = "none") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.drop = nn.Dropout(0.0)  # set by a training protocol
        self.weights = weights
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
        self.frozen = not trained
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        for m in self._frozen_stages:
            m.eval()
        return self

    def param_groups(self, lr: float, backbone_lr_scale: float) -> list[dict]:
        """The head at ``lr``; trained backbone stages at ``lr * backbone_lr_scale``."""
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        trained = [p for p in self.backbone.parameters() if p.requires_grad]
        if trained:
            groups.append({"params": trained, "lr": lr * backbone_lr_scale})
        return groups

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages in forward order: the blocks of ``features`` (MobileNet,
    EfficientNet, DenseNet) or its top-level children (ResNet, Inception), parameter-free
    ones (pooling, dropout) left out."""
    root = backbone.features if isinstance(getattr(backbone, "features", None),
                                           nn.Sequential) else backbone
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


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_weights(backbone: str, name: str):
    from torchvision.models import get_model_weights

    enum = get_model_weights(backbone)
    try:
        return enum[name]
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__])
        raise WeightsError(
            f"unknown weights {name!r} for {backbone}; valid: {valid}, 'none', or a file path"
        ) from None


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any decoding failure means the file is not a usable state dict
        raise WeightsError(
            f"cannot read weights file {path}: {e}. Expected a PyTorch state dict "
            "(.pth/.pt) or a .safetensors file"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                        head_attr: str) -> None:
    """Strictly load ``state`` (a full torchvision state dict or a headless one) into ``model``."""
    state = {k: v for k, v in state.items() if not k.startswith(f"{head_attr}.")}
    # Keys of the auxiliary ImageNet classifier are legitimately dropped.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    own = model.state_dict()
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


def build_backbone(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, str]:
    """Headless torchvision backbone and a label for the weights it carries."""
    import torchvision.models as tvm

    spec = BACKBONES[name]
    builder = getattr(tvm, spec.builder)
    kwargs = dict(spec.build_kwargs)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        model, label = builder(weights=None, **kwargs), "none"
    elif isinstance(weights, str) and not (weights.endswith((".pth", ".pt", ".safetensors"))
                                           or os.sep in weights):
        w = _torchvision_weights(spec.builder, weights)
        cache = _hub_file(w.url)
        kwargs.pop("init_weights", None)
        cached = cache.is_file()
        try:
            model = builder(weights=w, progress=False, **kwargs)
        except Exception as e:
            if cached:  # present but unusable: say which file and what to do
                raise WeightsError(
                    f"cannot use the cached {w} weights at {cache} ({type(e).__name__}: {e}); "
                    "delete the file to download it again, or pass --weights PATH"
                ) from e
            if not isinstance(e, urllib.error.URLError | OSError | ConnectionError | RuntimeError):
                raise
            # torch hub checks the download against the hash in the file name and keeps
            # nothing that fails it, so a failed download leaves no file behind.
            raise WeightsError(
                f"could not download the {w} weights for {name} ({e}). Offline? Place the file "
                f"{os.path.basename(w.url)} (from {w.url}) at {cache} (the torch hub cache, "
                "moved by TORCH_HOME), or pass a local state dict with --weights PATH "
                "(or `weights: PATH` under model_options in the YAML)"
            ) from e
        label = str(w)
    else:
        path = Path(weights)
        state = _load_state_file(path)
        if spec.builder == "inception_v3":
            # torchvision's ImageNet InceptionV3 expects its inputs re-normalised to [-1, 1].
            kwargs["transform_input"] = True
        model = builder(weights=None, **kwargs)
        setattr(model, spec.head_attr, nn.Identity())  # the file's ImageNet head is not used
        load_backbone_state(model, state, str(path), spec.head_attr)
        label = str(path)
    setattr(model, spec.head_attr, nn.Identity())
    return model, label


def _make_builder(backbone: str):
    def build(num_classes: int, in_chans: int, weights: str | None = "DEFAULT",
              finetune: str = "none") -> TransferModel:
        if in_chans != 3:
            raise ValueError(
                f"transfer-{backbone} takes 3-channel input (grey images are replicated to 3 "
                f"channels by the data pipeline), got in_chans={in_chans}"
            )
        model, label = build_backbone(backbone, weights)
        return TransferModel(model, BACKBONES[backbone].features, num_classes, label, finetune)

    return build


for _name, _spec in BACKBONES.items():
    register_model(
        f"transfer-{_name}",
        ModelInfo(
            name=f"transfer-{_name}", family="transfer", num_classes=2, in_chans=3,
            input_size=_spec.input_size, reference="torchvision ImageNet weights",
            description=f"frozen torchvision {_name} + Linear({_spec.features} -> classes)",
            min_input_size=75 if _name == "inception_v3" else 32,
            extra={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "features": _spec.features},
        ),
    )(_make_builder(_name))
