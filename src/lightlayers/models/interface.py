"""What the harness may rely on in a model: the declared interface every model family implements.

The trainer, the protocol and the trial code use only what :class:`ClassifierBase` declares, so
a new family is one subclass, never a new ``hasattr`` probe somewhere in the harness:

- ``forward_features(x)`` -> ``(B, num_features)``, and ``forward_head(features)`` -> logits;
  ``forward(x) == forward_head(forward_features(x))``.
- ``head``: the final classifier; ``head_dropout``: the dropout before it (p set by a protocol).
- ``frozen``: the features are a fixed function of the input (a frozen backbone in eval mode),
  so they may be computed once and cached; ``feature_head()`` is the module that trains on them.
- ``param_groups(lr, backbone_lr_scale)``: the optimizer's groups (all trainable parameters at
  ``lr`` unless the family says otherwise).
- ``mutable_state()``: the part of the state training can change (a checkpoint to restore).
- ``preprocess``: what inputs the model expects (size, crop, normalisation).
- ``weights``: a label for the weights it was built with ("none" when trained from scratch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ClassifierBase", "FeatureHead", "ModelInfo", "Preprocess"]


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, before it is built: its defaults and where it comes from."""

    name: str
    family: str
    num_classes: int
    in_chans: int
    input_size: int
    reference: str
    description: str = ""
    k: int | None = None
    # Smallest square input the topology accepts as published (smaller ones are zero-padded).
    min_input_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preprocess:
    """How images are fed to a model, after decoding to a square uint8 image.

    ``crop_size`` is the side of the input the model expects at its reference size;
    ``resize_size`` the side the image is resized to first, before a center crop to
    ``crop_size`` (equal to ``crop_size``: no crop). ``mean``/``std`` normalise [0, 1] values per
    channel (``None``: [0, 1] only). For a pretrained backbone they come from the weights'
    own transforms, so they cannot drift from torchvision.
    """

    crop_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"

    def sizes_for(self, crop: int) -> tuple[int, int]:
        """(decode size, crop size) for an input of ``crop`` pixels: the reference ratio of
        resize to crop is kept, so ``--size 75`` on a 342/299 recipe decodes at 86, crops 75."""
        if not self.crop_size or not self.resize_size or self.resize_size == self.crop_size:
            return crop, crop
        return round(crop * self.resize_size / self.crop_size), crop


class ClassifierBase(nn.Module):
    """Base of every model in the zoo (see the module docstring for the contract)."""

    head: nn.Module
    num_features: int
    # Set by create_model: the registry's entry with this instance's classes and channels.
    model_info: ModelInfo
    weights: str = "none"
    preprocess: Preprocess = Preprocess()

    def __init__(self) -> None:
        super().__init__()
        # Dropout before the head: p = 0 (a no-op) unless a training protocol sets it.
        self.head_dropout = nn.Dropout(0.0)

    @property
    def frozen(self) -> bool:
        return False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def weights_info(self) -> dict[str, object]:
        """What the model's starting weights were: a label, and for a file its checksum."""
        return {"weights": self.weights}

    def set_head_dropout(self, p: float) -> None:
        self.head_dropout.p = p

    def param_groups(self, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def mutable_state(self) -> dict[str, torch.Tensor]:
        if self.frozen:  # a frozen backbone's millions of values never change
            return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}
        return self.state_dict()

    def feature_head(self) -> FeatureHead:
        """A model over this one's features (sharing its head): what trains on cached ones."""
        return FeatureHead(self)


class FeatureHead(ClassifierBase):
    """``head(dropout(features))`` of another model, sharing its modules."""

    def __init__(self, model: ClassifierBase) -> None:
        super().__init__()
        self.head = model.head
        self.head_dropout = model.head_dropout
        self.num_features = model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x
