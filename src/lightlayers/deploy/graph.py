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

A last feature map of a few cells (3x3 for a light model at 28 px) says little about where the
model looked, so :func:`choose_cam_layer` picks the last layer whose map is at least 7x7, and
:class:`LayerCamDeployable` exports Grad-CAM there: an earlier layer's gradients are no plain
forward computation, so its backward pass is traced once into plain operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from lightlayers.models.interface import ClassifierBase

__all__ = ["CAM_MIN_SIDE", "CamLayer", "Deployable", "LayerCamDeployable", "choose_cam_layer",
           "count_global_pools", "head_matrix", "layer_cam", "over_image", "reference_cam"]

# A Grad-CAM map smaller than this per side is a few blocks blown up over the image: it shows
# where the model looked no better than a uniform wash, so it is not drawn.
CAM_MIN_SIDE = 7


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
def head_matrix(model: ClassifierBase, num_features: int) -> torch.Tensor:
    """The effective (classes, features) matrix of the model's affine head (``forward_head``
    in eval mode; a LightLinear head is the product of its factors)."""
    eye = torch.eye(num_features)
    zero = torch.zeros(1, num_features)
    return (model.forward_head(eye) - model.forward_head(zero)).T.contiguous()


class Deployable(nn.Module):
    """``images -> (probabilities, cam)``; ``cam`` is (batch, classes, h, w), the Grad-CAM map
    of every class on the last feature map (see the module docstring), or absent when the
    model has no global average pooling (``with_cam`` False)."""

    cam_weight: torch.Tensor  # a buffer, when with_cam

    def __init__(self, model: ClassifierBase, example: torch.Tensor) -> None:
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


def reference_cam(deployable: Deployable | LayerCamDeployable, x: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of class ``target[i]`` for image ``x[i]`` computed by Captum's LayerGradCam on
    the same feature map (real gradients): (batch, h, w)."""
    from lightlayers.deploy.errors import require

    LayerGradCam = require("captum.attr").LayerGradCam

    if isinstance(deployable, LayerCamDeployable):
        layer = deployable.cam_layer
        gc = LayerGradCam(deployable.base.logits, layer.module)
        with torch.enable_grad():
            attr = gc.attribute(x, target=target.tolist(), relu_attributions=True,
                                attribute_to_layer_input=layer.on_input)
        return over_image(attr.detach(), layer)[:, 0]
    if not deployable.with_cam:
        raise ValueError("the model has no global average pooling: no Grad-CAM layer")
    gc = LayerGradCam(deployable.logits, deployable.pool_input)
    with torch.enable_grad():
        attr = gc.attribute(x, target=target.tolist(), relu_attributions=True)
    return attr.detach()[:, 0]


@dataclass(frozen=True)
class CamLayer:
    """The layer whose Grad-CAM map is drawn: its name, the side of its map at the model's
    input size, and the module (None: the last feature map, the one the exported file
    carries and :class:`Deployable` computes without gradients)."""

    name: str
    side: int  # of the map's part over the image (a padded input's border left out)
    input_size: int
    module: nn.Module | None = None
    # The side the model pads a small input to (zeros all round, centred), else input_size.
    padded: int = 0
    # The map is the module's input (what a downsampling layer receives), not its output.
    on_input: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}, {self.side}x{self.side} map at {self.input_size} px"


def coarse_note(last_side: int, input_size: int, min_side: int = CAM_MIN_SIDE) -> str:
    """The one line said instead of a heatmap when no layer's map reaches ``min_side``."""
    return (f"map too coarse: the last layer with a map is {last_side}x{last_side} at "
            f"{input_size} px; no layer reaches {min_side}x{min_side}, so no heatmap is drawn "
            "(a larger input size gives larger maps)")


@torch.no_grad()
def choose_cam_layer(deployable: Deployable, example: torch.Tensor,
                     min_side: int = CAM_MIN_SIDE) -> CamLayer | str:
    """The last layer whose map is at least ``min_side`` on each side at ``example``'s size:
    the last feature map when it is that large, else the last earlier layer or block that is
    (a module's 4-d output, in the order the modules return). A string (:func:`coarse_note`)
    when none is."""
    size = int(example.shape[-1])
    # (name, module, side, on_input) in the order the forward pass makes them: a module's
    # input when it is called, its output when it returns. Inputs count because the last
    # full-resolution map is often one no module returns: a residual block's sum, handed
    # straight to its pooling.
    outputs: list[tuple[str, nn.Module, int, bool]] = []

    def side(t: Any) -> int | None:
        return int(min(t.shape[-2:])) if isinstance(t, torch.Tensor) and t.dim() == 4 else None

    def pre(name: str, module: nn.Module) -> Any:
        def record(_m: nn.Module, inputs: Any) -> None:
            if inputs and (s := side(inputs[0])) is not None:
                outputs.append((name, module, s, True))
        return record

    def post(name: str, module: nn.Module) -> Any:
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if (s := side(out)) is not None:
                outputs.append((name, module, s, False))
        return record

    # An in-place activation hands Captum a tensor it cannot take gradients at.
    modules = [(n, m) for n, m in deployable.model.named_modules()
               if n and not getattr(m, "inplace", False)]
    handles = [m.register_forward_pre_hook(pre(n, m)) for n, m in modules]
    handles += [m.register_forward_hook(post(n, m)) for n, m in modules]
    try:
        out = deployable(example[:1])
    finally:
        for h in handles:
            h.remove()
    # A model that zero-pads a small input (study-conv below 50 px) maps the padding too:
    # only the part of a map over the image counts.
    # The valid-padded topologies pad a smaller input with zeros up to min_input_size.
    padded = max(size, int(getattr(deployable.model, "min_input_size", 0) or 0))

    def over_image(s: int) -> int:
        return s * size // padded

    if deployable.with_cam:
        last = over_image(int(min(out[1].shape[-2:])))
        if last >= min_side:
            return CamLayer("last feature map", last, size, None, padded)
    else:
        last = over_image(outputs[-1][2]) if outputs else 0
    wide = [o for o in outputs if over_image(o[2]) >= min_side]
    if not wide or not deployable.with_cam:
        return coarse_note(max(last, 1), size, min_side)
    name, module, s, on_input = wide[-1]
    return CamLayer(f"input of {name}" if on_input else name, over_image(s), size, module,
                    padded, on_input)


def layer_cam(deployable: Deployable, layer: CamLayer, x: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of class ``target[i]`` for image ``x[i]`` on ``layer``: (batch, h, w). The
    last feature map by the exported module's own forward computation (the file's maps);
    an earlier layer by Captum's LayerGradCam (real gradients, in PyTorch only: ONNX
    Runtime has none)."""
    if layer.module is None:
        with torch.no_grad():
            _, cams = deployable(x)
        maps = cams[torch.arange(len(x)), target]
    else:
        from lightlayers.deploy.errors import require

        LayerGradCam = require("captum.attr").LayerGradCam
        gc = LayerGradCam(deployable.logits, layer.module)
        with torch.enable_grad():
            attr = gc.attribute(x, target=target.tolist(), relu_attributions=True,
                                attribute_to_layer_input=layer.on_input)
        maps = attr.detach()[:, 0]
    return over_image(maps[:, None], layer)[:, 0]


def over_image(maps: torch.Tensor, layer: CamLayer) -> torch.Tensor:
    """``maps`` (batch, classes, h, w) of ``layer`` as they lie over the image: a model that
    zero-pads a small input maps the padding too, so its maps are stretched over the padded
    input and the image's own square is cut out of their middle (input_size on a side)."""
    if layer.padded <= layer.input_size:
        return maps
    up = F.interpolate(maps, size=(layer.padded, layer.padded), mode="bilinear",
                       align_corners=False)
    top = (layer.padded - layer.input_size) // 2
    return up[..., top:top + layer.input_size, top:top + layer.input_size]


def _max_pool_backward(grad_output: torch.Tensor, self: torch.Tensor, kernel_size: Any,
                       stride: Any, padding: Any, dilation: Any, ceil_mode: bool,
                       indices: torch.Tensor) -> torch.Tensor:
    """The gradient of a max pooling as plain operations (ONNX has no such backward op):
    each output's gradient added at the input position it took its maximum from."""
    n, c, h, w = self.shape
    flat = torch.zeros(n, c, h * w, dtype=grad_output.dtype, device=grad_output.device)
    return flat.scatter_add(2, indices.reshape(n, c, -1),
                            grad_output.reshape(n, c, -1)).reshape(n, c, h, w)


def _convolution_backward(grad_output: torch.Tensor, input: torch.Tensor,
                          weight: torch.Tensor, bias_sizes: Any, stride: Any, padding: Any,
                          dilation: Any, transposed: bool, output_padding: Any, groups: int,
                          output_mask: Any) -> tuple[Any, Any, Any]:
    """A convolution's gradient with respect to its input as a transposed convolution (ONNX
    has no backward op; PyTorch leaves this one undecomposed). Grad-CAM needs no weight or
    bias gradient: those are left out, and asking for them leaves the op as it is."""
    if transposed or output_mask[1] or output_mask[2]:
        return NotImplemented
    dims = len(input.shape) - 2
    # The input side the forward convolution's output maps back to; a strided convolution
    # whose input had rows it never reached gets them back as output padding.
    back = [(grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
            + dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(dims)]
    extra = [input.shape[2 + i] - back[i] for i in range(dims)]
    grad_input = torch.ops.aten.convolution.default(
        grad_output, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_input, None, None


class _GradCamAt(nn.Module):
    """``images -> (probabilities, cam)`` with ``cam`` the Grad-CAM of every class on
    ``layer`` of ``base``, by autograd (to be traced into plain operations)."""

    def __init__(self, base: Deployable, layer: CamLayer, classes: int) -> None:
        super().__init__()
        self.base, self.layer, self.classes = base, layer, classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        module = self.layer.module
        assert module is not None
        if self.layer.on_input:
            def own_copy(_m: nn.Module, inputs: Any) -> Any:
                # The layer's own copy of its input, as Captum attributes to: a tensor that
                # also feeds another branch (a residual block's input) has its gradient
                # through this layer only.
                seen.append(inputs[0].clone())
                return (seen[-1], *inputs[1:])

            handle = module.register_forward_pre_hook(own_copy)
        else:
            handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            logits = self.base.logits(x)
        finally:
            handle.remove()
        a = seen[-1]
        maps = []
        for c in range(self.classes):
            # Each image's score depends on its own image only: the gradient of the batch's
            # sum is every image's own gradient.
            (g,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=True)
            maps.append(F.relu((g.mean((2, 3), keepdim=True) * a).sum(1)))
        return torch.softmax(logits.float(), dim=1), over_image(torch.stack(maps, 1),
                                                                 self.layer)


class LayerCamDeployable(nn.Module):
    """``images -> (probabilities, cam)`` like :class:`Deployable`, ``cam`` being Grad-CAM on an
    earlier layer than the last feature map (:func:`choose_cam_layer`), its gradients written
    out as forward operations: the backward pass is traced once (``make_fx``, PyTorch's core
    decompositions, a max pooling's backward as a scatter), so ONNX Runtime, which has no
    gradients, computes the same maps. Checked against Captum by ``lightlayers export``."""

    def __init__(self, base: Deployable, layer: CamLayer, example: torch.Tensor) -> None:
        super().__init__()
        from torch._decomp import core_aten_decompositions
        from torch.func import functional_call
        from torch.fx.experimental.proxy_tensor import make_fx

        self.base, self.cam_layer, self.model = base, layer, base.model
        self.with_cam, self.which = True, base.which
        classes = int(base.cam_weight.shape[0])
        inner = _GradCamAt(base, layer, classes)
        params = dict(inner.named_parameters())
        state = {**params, **dict(inner.named_buffers())}
        self._names = list(state)

        def run(x: torch.Tensor, *tensors: torch.Tensor) -> Any:
            return functional_call(inner, dict(zip(self._names, tensors, strict=True)), (x,))

        table = dict(core_aten_decompositions())
        table[torch.ops.aten.max_pool2d_with_indices_backward.default] = _max_pool_backward
        table[torch.ops.aten.convolution_backward.default] = _convolution_backward
        tensors = [t.detach().requires_grad_(k in params) for k, t in state.items()]
        with torch.enable_grad():
            self.graph = make_fx(run, decomposition_table=table, tracing_mode="symbolic")(
                example, *tensors)
        # A backward operation PyTorch could not decompose (some convolutions of the
        # torchvision backbones) has no ONNX form: refused here, before an export fails.
        left = sorted({str(n.target) for n in self.graph.graph.nodes
                       if n.op == "call_function" and "backward" in str(n.target)})
        if left:
            raise ValueError(f"backward operations left in the traced graph: {left}")
        for i, t in enumerate(tensors):
            self.register_buffer(f"state_{i}", t.detach().clone(), persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.logits(x)

    def forward(self, x: torch.Tensor) -> Any:
        return self.graph(x, *(getattr(self, f"state_{i}") for i in range(len(self._names))))
