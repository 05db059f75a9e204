"""Export a trial's model as one file (ONNX or TorchScript), verify it, quantize it to int8.

ONNX files come from PyTorch's exporter (``torch.onnx.export``, via ``torch.export``) with a
dynamic batch axis; the model card (:mod:`~lightlayers.deploy.card`) is the file's
``metadata_props``; the exporter's per-node debugging records (source lines, stack traces) are
dropped, which shrinks a small model's file by more than half. int8 files come from ONNX
Runtime's static quantization (QOperator format: QLinearConv and friends; per-channel int8
weights, uint8 activations calibrated with MinMax on images of the training split).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lightlayers.deploy.card import ModelCard
from lightlayers.deploy.errors import DeployError, require
from lightlayers.deploy.graph import Deployable, reference_cam
from lightlayers.scratch import scratch_dir

if TYPE_CHECKING:
    from lightlayers.models.interface import ClassifierBase

__all__ = ["FP32_TOLERANCE", "Verification", "batches", "card_of_bytes", "check_graph",
           "compact", "deployable_for", "evaluate", "onnx_session", "quantize_int8", "read_card",
           "run_model", "to_onnx", "to_torchscript", "verify"]

# Largest |probability difference| allowed between an fp32 export and PyTorch.
FP32_TOLERANCE = 1e-4
# Largest difference between the file's Grad-CAM maps and Captum's, relative to Captum's
# largest value over the checked images.
CAM_TOLERANCE = 1e-4
# int8: the operators computed in int8 (a ReLU after a convolution folds into it; the
# softmax and the Grad-CAM maps stay float), and one weight scale per output channel.
INT8_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Add", "MaxPool")
PER_CHANNEL = True
def deployable_for(model: ClassifierBase, card: ModelCard, finer_cam: bool = True,
                   cam_min_side: int | None = None) -> tuple[Any, torch.Tensor]:
    """The module to export, and an example input batch (two zero images). Its Grad-CAM
    output is the last feature map's, or with ``finer_cam``, when that map is smaller than
    ``cam_min_side`` (default graph.CAM_MIN_SIDE) on a side, the last earlier layer's that is
    at least that large (graph.LayerCamDeployable: the gradients traced into the graph)."""
    from lightlayers.deploy.graph import CAM_MIN_SIDE, LayerCamDeployable, choose_cam_layer

    example = torch.zeros(2, card.input_chans, card.input_size, card.input_size)
    plain = Deployable(model, example).eval()
    if not (finer_cam and plain.with_cam):
        return plain, example
    layer = choose_cam_layer(plain, example,
                             CAM_MIN_SIDE if cam_min_side is None else cam_min_side)
    if isinstance(layer, str) or layer.module is None:
        return plain, example
    try:
        return LayerCamDeployable(plain, layer, torch.rand_like(example)).eval(), example
    except Exception:  # the tracer's errors have no common base class
        # A model the tracer cannot follow keeps its last map; predict says when that map is
        # too coarse to draw.
        return plain, example


def cam_fields(deployable: Any) -> dict[str, Any]:
    """The card's ``cam`` and ``cam_side`` for what ``deployable`` outputs."""
    from lightlayers.deploy.graph import LayerCamDeployable

    layer = deployable.cam_layer if isinstance(deployable, LayerCamDeployable) else None
    stretched = layer is not None and layer.padded > layer.input_size
    return {"cam": deployable.with_cam,
            "cam_side": layer.side if layer is not None and stretched else None}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines go to stdout and its warnings to stderr; keep neither."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def to_onnx(deployable: Deployable, example: torch.Tensor, card: ModelCard) -> bytes:
    """The serialized ONNX model of ``deployable`` with ``card`` as its metadata."""
    require("onnx")
    require("onnxscript")
    outputs = ["probabilities", "cam"] if deployable.with_cam else ["probabilities"]
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                deployable, (example,), None, input_names=["images"], output_names=outputs,
                dynamic_shapes=({0: batch},), external_data=False, verbose=False, dynamo=True)
    except Exception as e:  # the exporter's errors have no common base class
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeployError(f"{card.model} cannot be exported to ONNX by this PyTorch "
                          f"({torch.__version__}): {first}; try --format torchscript") from e
    if program is None:  # only without an output path and with dynamo off, neither of them here
        raise DeployError(f"{card.model}: the ONNX exporter returned no program")
    proto = compact(program.model_proto)
    set_card(proto, card.replace(**cam_fields(deployable)))
    return proto.SerializeToString()


# Attributes equal to what ONNX defines as their default when absent, dropped by compact():
# (op types, attribute, default; an INTS attribute is dropped when every entry equals it).
_DEFAULT_ATTRS = (
    (("Conv", "QLinearConv", "MaxPool", "AveragePool"), "auto_pad", b"NOTSET"),
    (("Conv", "QLinearConv"), "group", 1),
    (("Conv", "QLinearConv", "MaxPool"), "dilations", 1),
    (("Conv", "QLinearConv", "MaxPool", "AveragePool"), "strides", 1),
    (("Conv", "QLinearConv", "MaxPool", "AveragePool"), "pads", 0),
    (("MaxPool", "AveragePool"), "ceil_mode", 0),
    (("MaxPool",), "storage_order", 0),
)
# A convolution's kernel shape is inferred from its weight when absent.
_KERNEL_FROM_WEIGHT = ("Conv", "QLinearConv")


def _is_default(op: str, attr: Any) -> bool:
    if op in _KERNEL_FROM_WEIGHT and attr.name == "kernel_shape":
        return True
    for ops, name, default in _DEFAULT_ATTRS:
        if op in ops and attr.name == name:
            if isinstance(default, bytes):
                return attr.s == default
            if attr.ints:
                return all(v == default for v in attr.ints)
            return attr.type == attr.INT and attr.i == default
    return False


def compact(proto: Any) -> Any:
    """``proto`` without what only debugging needs: the exporter's records (source lines,
    stack traces, graph signature), node names, intermediate shapes, unused opset imports,
    attributes that restate ONNX's defaults, duplicate constants (quantization scales);
    tensors get short names (the inputs and outputs keep theirs). On the study's small models
    that is most of the file; the computation is unchanged (a graph with subgraphs is left
    as the exporter wrote it, but for the records)."""
    g = proto.graph
    del g.metadata_props[:]
    del g.value_info[:]
    for v in (*g.input, *g.output):
        v.doc_string = ""
        del v.metadata_props[:]
    for node in g.node:
        node.name = ""
        node.doc_string = ""
        del node.metadata_props[:]
    if any(a.type in (a.GRAPH, a.GRAPHS) for node in g.node for a in node.attribute):
        return proto
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names):x}"
        return names[name]

    # Identical constants become one (the quantizer writes a scale per use).
    from onnx import numpy_helper

    first: dict[tuple[Any, ...], str] = {}
    same: dict[str, str] = {}
    unique = []
    for t in g.initializer:
        t.doc_string = ""
        del t.metadata_props[:]
        content = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if t.name not in keep and content in first:
            same[t.name] = first[content]
        else:
            first.setdefault(content, t.name)
            unique.append(t)
    if same:
        copies = [type(t)() for t in unique]
        for new_t, old_t in zip(copies, unique, strict=True):
            new_t.CopyFrom(old_t)
        del g.initializer[:]
        g.initializer.extend(copies)
    for t in g.initializer:
        t.name = short(t.name)
    for node in g.node:
        node.input[:] = [short(same.get(n, n)) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        kept_attrs = [a for a in node.attribute if not _is_default(node.op_type, a)]
        if len(kept_attrs) != len(node.attribute):
            copies = [type(a)() for a in kept_attrs]
            for new_a, old_a in zip(copies, kept_attrs, strict=True):
                new_a.CopyFrom(old_a)
            del node.attribute[:]
            node.attribute.extend(copies)
    used = {node.domain for node in g.node} | {""}
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def set_card(proto: Any, card: ModelCard) -> None:
    del proto.metadata_props[:]
    for k, v in card.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "lightlayers"
    proto.producer_version = card.lightlayers_version
    proto.doc_string = (f"{card.model} seed {card.seed} ({card.precision}): classes "
                        f"{', '.join(card.classes)}; see the metadata for its preprocessing")


def to_torchscript(deployable: Deployable, example: torch.Tensor, card: ModelCard) -> bytes:
    """A traced TorchScript module with ``card`` as the extra file ``lightlayers.json``."""
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(deployable, example, check_trace=False)
    buf = io.BytesIO()
    card = card.replace(**cam_fields(deployable))
    torch.jit.save(traced, buf, _extra_files={"lightlayers.json": json.dumps(card.to_props())})
    return buf.getvalue()


def onnx_session(model: bytes | str | Path, threads: int | None = None,
                 spin: bool = True) -> Any:
    """An ONNX Runtime session on the CPU. ``spin`` False: its idle threads sleep instead
    of spinning (for timing it beside another runtime, whose calls its spinning would slow)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no warnings about unused initializers
    if threads is not None:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        where = "the model" if isinstance(model, bytes) else str(model)
        raise DeployError(f"{where}: ONNX Runtime cannot load it "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else e}); "
                          "export it again with `lightlayers export`") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _dims(value: Any) -> list[int | str] | None:
    """A graph input's or output's axes (an int per fixed axis, the axis name per symbolic
    one), or None when it is not a tensor of known rank."""
    t = value.type
    if t.WhichOneof("value") != "tensor_type" or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.WhichOneof("value") == "dim_value" else (d.dim_param or "?")
            for d in t.tensor_type.shape.dim]


def _shown(dims: list[int | str] | None) -> str:
    return "of unknown shape" if dims is None else "x".join(str(d) for d in dims)


def check_graph(proto: Any, card: ModelCard, where: str) -> None:
    """The card against the graph it describes: the input ``images`` is float32
    (batch, input_chans, input_size, input_size) and the output ``probabilities``
    (batch, classes), plus ``cam`` when the card says so. A symbolic axis matches any value.
    A mismatch is a DeployError naming the file, the card's value and the graph's."""
    onnx = require("onnx")
    graph = proto.graph
    stored = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in stored}
    outputs = {v.name: v for v in graph.output}
    again = "export the model again with `lightlayers export`"

    def refuse(what: str) -> DeployError:
        return DeployError(f"{where}: {what}; {again}")

    if "images" not in inputs:
        raise refuse(f"its graph has no input named 'images' (inputs: "
                     f"{', '.join(sorted(inputs)) or 'none'})")
    image = inputs["images"]
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise refuse("its graph's input 'images' is not float32")
    dims = _dims(image)
    if dims is None or len(dims) != 4:
        raise refuse(f"its graph's input 'images' is {_shown(dims)}, not "
                     "batch x channels x height x width")
    for what, card_value, graph_value in (
            ("input channels", card.input_chans, dims[1]),
            ("input height", card.input_size, dims[2]),
            ("input width", card.input_size, dims[3])):
        if isinstance(graph_value, int) and graph_value != card_value:
            raise refuse(f"its card says {what} {card_value} but its graph's input 'images' "
                         f"is {_shown(dims)} ({what} {graph_value})")
    if "probabilities" not in outputs:
        raise refuse(f"its graph has no output named 'probabilities' (outputs: "
                     f"{', '.join(sorted(outputs)) or 'none'})")
    n = len(card.classes)
    for name, rank, required in (("probabilities", 2, True), ("cam", 4, card.cam)):
        if name not in outputs:
            if required:
                raise refuse(f"its card says cam true but its graph has no output 'cam' "
                             f"(outputs: {', '.join(sorted(outputs))})")
            continue
        out = _dims(outputs[name])
        if out is not None and (len(out) != rank or
                                (isinstance(out[1], int) and out[1] != n)):
            raise refuse(f"its card says {n} classes ({', '.join(card.classes)}) but its "
                         f"graph's output '{name}' is {_shown(out)}")


def _card_of_proto(proto: Any, where: str) -> ModelCard:
    card = ModelCard.from_props({p.key: p.value for p in proto.metadata_props}, where)
    check_graph(proto, card, where)
    return card


def read_card(path: str | Path) -> ModelCard:
    """The model card of an exported file (.onnx, or a TorchScript .pt/.ts), checked: every
    field of its type, and for ONNX against the graph's input and output shapes
    (:func:`check_graph`). Any problem is a DeployError naming the file."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise DeployError(f"{path} is not a regular file; give a model file written by "
                              "`lightlayers export`")
        raise DeployError(f"{path} does not exist; export a model first with "
                          "`lightlayers export RUN_DIR --out FILE`")
    if path.suffix.lower() == ".onnx":
        onnx = require("onnx")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and others
            raise DeployError(f"{path} is not a readable ONNX file ({_first_line(e)}); "
                              "export it again") from e
        return _card_of_proto(proto, str(path))
    files = {"lightlayers.json": ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as e:  # TorchScript raises RuntimeError and others
        raise DeployError(f"{path} is neither an ONNX file (.onnx) nor a TorchScript module "
                          f"({_first_line(e)}); give a file written by "
                          "`lightlayers export`") from e
    try:
        props = json.loads(files["lightlayers.json"]) if files["lightlayers.json"] else {}
    except ValueError as e:
        raise DeployError(f"{path}: its lightlayers.json is not JSON ({e}); export it "
                          "again") from e
    if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
        raise DeployError(f"{path}: its lightlayers.json is not an object of strings; "
                          "export it again")
    return ModelCard.from_props(props, str(path))


def card_of_bytes(blob: bytes) -> ModelCard:
    """The model card of a serialized ONNX model, checked as :func:`read_card` does."""
    onnx = require("onnx")
    try:
        proto = onnx.load_from_string(blob)
    except Exception as e:  # protobuf's DecodeError and others
        raise DeployError(f"the model is not a readable ONNX model ({_first_line(e)})") from e
    return _card_of_proto(proto, "the model")


Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def run_model(model: bytes | str | Path, fmt: str = "onnx",
              threads: int | None = None, spin: bool = True) -> Runner:
    """``x (N, C, H, W) float32 -> (probabilities, cam or None)`` for an exported model
    (``fmt`` "onnx": ONNX Runtime on the CPU; "torchscript": PyTorch)."""
    where = "the model" if isinstance(model, bytes) else str(model)

    def failed(x: np.ndarray, e: Exception) -> DeployError:
        return DeployError(f"{where} failed on a batch of shape {'x'.join(map(str, x.shape))} "
                           f"({_first_line(e)}); check that its model card matches the model, "
                           "or export it again with `lightlayers export`")

    if fmt == "onnx":
        session = onnx_session(model, threads, spin)
        names = [o.name for o in session.get_outputs()]
        inputs = [i.name for i in session.get_inputs()]
        if "images" not in inputs or "probabilities" not in names:
            raise DeployError(f"{where}: its graph needs the input 'images' and the output "
                              f"'probabilities' (it has inputs {', '.join(inputs) or 'none'}, "
                              f"outputs {', '.join(names) or 'none'}); export it again with "
                              "`lightlayers export`")

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            try:
                out = dict(zip(names, session.run(None, {"images": x}), strict=True))
            except Exception as e:  # onnxruntime raises its own exception types
                raise failed(x, e) from e
            return out["probabilities"], out.get("cam")

        return run
    module = torch.jit.load(io.BytesIO(model) if isinstance(model, bytes) else str(model),
                            map_location="cpu")

    def run_ts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            with torch.no_grad():
                out = module(torch.from_numpy(x))
        except Exception as e:  # TorchScript raises RuntimeError and others
            raise failed(x, e) from e
        if isinstance(out, tuple | list):
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None

    return run_ts


def batches(split: Any, card: ModelCard, batch_size: int = 64,
            limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images float32 (B, C, H, W), labels)`` of a dataset split, preprocessed as the
    trial's training did (:class:`lightlayers.data.DeviceLoader` with the card's options)."""
    from lightlayers.data import DeviceLoader, Split

    if limit is not None and limit < len(split):
        split = Split(split.images[:limit], split.labels[:limit], None)
    loader = DeviceLoader(split, batch_size, "cpu", **card.loader_options())
    for x, y in loader:
        yield x.numpy(), y.numpy()


@dataclass
class Verification:
    images: int
    max_prob_diff: float
    cam_rel_diff: float | None  # None: the file has no Grad-CAM output, or no image checked


def verify(run: Runner, deployable: Deployable, split: Any, card: ModelCard,
           cam_images: int = 64) -> Verification:
    """Compare the exported model's outputs with PyTorch's on every image of ``split``: the
    largest |probability difference|, and for the first ``cam_images`` images the largest
    Grad-CAM difference against Captum's (relative to Captum's largest value)."""
    max_diff, n = 0.0, 0
    cam_err, cam_scale, cam_n = 0.0, 0.0, 0
    for x, _ in batches(split, card):
        probs, cam = run(x)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            want = torch.softmax(deployable.model(xt).float(), 1).numpy()
        max_diff = max(max_diff, float(np.abs(probs - want).max()))
        n += len(x)
        if cam is not None and cam_n < cam_images:
            take = min(len(x), cam_images - cam_n)
            target = torch.from_numpy(want[:take].argmax(1))
            ref = reference_cam(deployable, xt[:take], target).numpy()
            got = cam[np.arange(take), target.numpy()]
            cam_err = max(cam_err, float(np.abs(got - ref).max()))
            cam_scale = max(cam_scale, float(np.abs(ref).max()))
            cam_n += take
    cam_rel = None if cam_n == 0 else (cam_err / cam_scale if cam_scale > 0 else cam_err)
    return Verification(n, max_diff, cam_rel)


def evaluate(run: Runner, split: Any, card: ModelCard) -> dict[str, Any]:
    """Test metrics of an exported model on ``split`` (the study's own metric functions)."""
    from lightlayers.metrics import classification_metrics

    probs, labels = [], []
    for x, y in batches(split, card):
        probs.append(run(x)[0])
        labels.append(y)
    p = np.concatenate(probs).astype(np.float64)
    y = np.concatenate(labels)
    m = classification_metrics(y, p, card.positive_class, card.threshold)
    return {"accuracy": m["accuracy"], "auc": m.get("auc"), "probs": p, "labels": y}


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed images."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self._chunks = iter(chunks)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._chunks, None)
        return None if x is None else {"images": x}


def calibration_images(split: Any, card: ModelCard, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` images drawn at random (seeded) from ``split``, preprocessed, in batches of 32."""
    from lightlayers.data import Split

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split), size=min(n, len(split)), replace=False))
    sub = Split(np.ascontiguousarray(split.images[idx]), np.asarray(split.labels)[idx], None)
    return [x for x, _ in batches(sub, card, batch_size=32)]


def quantize_int8(fp32: bytes, calibration: list[np.ndarray], card: ModelCard) -> bytes:
    """Static int8 quantization of an fp32 ONNX model (QDQ, per-channel weights), with the
    card's precision set to int8."""
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    # Named by this pid, holding the quantizer's own temporary folders too: an export killed
    # outright leaves one folder, which the next export removes.
    with scratch_dir("int8", nest=True) as tmp:
        src, pre, dst = (tmp / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        try:
            with _quiet():
                # Shape inference and graph clean-up, as ONNX Runtime recommends before
                # quantizing.
                q.shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                q.quantize_static(
                    str(pre), str(dst), _Calibration(calibration),
                    quant_format=q.QuantFormat.QOperator, per_channel=PER_CHANNEL,
                    weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                    calibrate_method=q.CalibrationMethod.MinMax,
                    op_types_to_quantize=list(INT8_OPS))
        except Exception as e:  # onnxruntime's quantizer raises many types
            raise DeployError(f"int8 quantization of {card.model} failed "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                              "export without --int8") from e
        proto = compact(onnx.load(str(dst)))
    set_card(proto, card.replace(precision="int8"))
    return proto.SerializeToString()

