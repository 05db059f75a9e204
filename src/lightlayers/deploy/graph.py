"""The module that is exported: a classifier's probabilities and its Grad-CAM maps.

Grad-CAM (Selvaraju et al. 2017) weights each channel ``k`` of a feature map ``A`` by the mean
gradient of the class score ``y_c`` over its positions, ``a_ck = mean_ij dy_c/dA_kij``, and
keeps ``relu(sum_k a_ck A_k)``. Every model of the zoo ends the same way: its last feature map
is globally average-pooled and fed to an affine head (the study's and paper's models, and the
torchvision backbones: ResNet, Inception, MobileNet, EfficientNet, DenseNet; dropout is off in
eval). For that ending ``dy_c/dA_kij = W_ck / (h w)`` wherever ``W`` is the head's effective
matrix, so ``a_ck = W_ck / (h w)`` and Grad-CAM is a plain forward computation:
``relu(sum_k W_ck A_k) / (h w)``.

Why that matters: ONNX Runtime has no gradients, so an exported file can carry Grad-CAM only
as forward operations. :class:`Deployable` computes the maps that way, and
:func:`reference_cam` computes them with Captum's ``LayerGradCam`` (real gradients, on the
same feature map); ``lightlayers export`` compares the two on the validation images and
refuses a file where they differ.

The feature map is found without naming a layer per architecture: it is the input of the
model's last global average pooling (``adaptive_avg_pool2d`` to 1x1, as a module or a
function; squeeze-and-excitation blocks pool too, so it is the last such call of a forward).
A :class:`~torch.overrides.TorchFunctionMode` routes that input through an identity module,
``pool_input``, which is what Captum attributes to and what the export reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Deployable", "count_global_pools", "head_matrix", "reference_cam"]


def _is_global_pool(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func is not F.adaptive_avg_pool2d:
        return False
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    return size == 1 or (isinstance(size, tuple | list) and tuple(size) == (1, 1))


class _PoolInput(TorchFunctionMode):
    """Counts global average poolings; routes the input of the ``which``-th one (1-based)
    through ``marker``."""

    def __init__(self, marker: nn.Module | None = None, which: int = 0) -> None:
        super().__init__()
        self.marker, self.which, self.calls = marker, which, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if _is_global_pool(func, args, kwargs):
            self.calls += 1
            if self.calls == self.which and self.marker is not None:
                args = (self.marker(args[0]), *args[1:])
        return func(*args, **kwargs)


def count_global_pools(model: nn.Module, example: torch.Tensor) -> int:
    """How many global average poolings one forward of ``model`` makes."""
    mode = _PoolInput()
    with torch.no_grad(), mode:
        model(example[:1])
    return mode.calls


@torch.no_grad()
def head_matrix(model: nn.Module, num_features: int) -> torch.Tensor:
    """The effective (classes, features) matrix of the model's affine head (``forward_head``
    in eval mode; a LightLinear head is the product of its factors)."""
    eye = torch.eye(num_features)
    zero = torch.zeros(1, num_features)
    return (model.forward_head(eye) - model.forward_head(zero)).T.contiguous()


class Deployable(nn.Module):
    """``images -> (probabilities, cam)``; ``cam`` is (batch, classes, h, w), the Grad-CAM map
    of every class on the last feature map (see the module docstring), or absent when the
    model has no global average pooling (``with_cam`` False)."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self.model = model.eval()
        self.pool_input = nn.Identity()
        self.which = count_global_pools(model, example)
        self.with_cam = self.which > 0
        if self.with_cam:
            features = int(model.num_features)
            self.register_buffer("cam_weight", head_matrix(model, features))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits, its last pooled feature map passing through ``pool_input``."""
        with _PoolInput(self.pool_input, self.which):
            return self.model(x)

    def forward(self, x: torch.Tensor) -> Any:
        feats: list[torch.Tensor] = []
        if self.with_cam:
            handle = self.pool_input.register_forward_hook(lambda m, i, o: feats.append(o))
            try:
                logits = self.logits(x)
            finally:
                handle.remove()
        else:
            logits = self.model(x)
        probs = torch.softmax(logits.float(), dim=1)
        if not self.with_cam:
            return probs
        a = feats[-1].float()
        h, w = a.shape[-2:]
        cam = F.relu(torch.einsum("ck,bkhw->bchw", self.cam_weight, a)) / (h * w)
        return probs, cam


def reference_cam(deployable: Deployable, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of class ``target[i]`` for image ``x[i]`` computed by Captum's LayerGradCam on
    the same feature map (real gradients): (batch, h, w)."""
    from lightlayers.deploy.errors import require

    LayerGradCam = require("captum.attr").LayerGradCam

    if not deployable.with_cam:
        raise ValueError("the model has no global average pooling: no Grad-CAM layer")
    gc = LayerGradCam(deployable.logits, deployable.pool_input)
    with torch.enable_grad():
        attr = gc.attribute(x, target=target.tolist(), relu_attributions=True)
    return attr.detach()[:, 0]
