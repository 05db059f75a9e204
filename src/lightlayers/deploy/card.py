"""What an exported model says about itself: the model card stored in the file.

In ONNX each field is one ``metadata_props`` entry whose value is JSON (``classes`` ->
``["NORMAL", "PNEUMONIA"]``), readable with any ONNX tool; in TorchScript the same fields are
the JSON file ``lightlayers.json`` among the module's extra files. ``lightlayers predict``
takes the whole preprocessing from here, so a file needs nothing of the run folder it came
from.

Preprocessing, in the order training applied it: decode the image file with
:func:`lightlayers.data.preprocess.decode_image` to a square ``image_size`` image with
``image_chans`` channels (``resize``: ``stretch`` ignores the aspect ratio, ``crop`` takes the
center square first; ``resample`` is the filter), then (as
:class:`lightlayers.data.DeviceLoader` does) center-crop to ``crop`` pixels, repeat a grey
channel to ``input_chans`` channels, scale to [0, 1] and normalise with ``mean`` and ``std``
(``None``: [0, 1] only). The model's input is then ``(batch, input_chans, input_size,
input_size)`` float32; its outputs are ``probabilities`` ``(batch, classes)`` and, when
``cam`` is true, ``cam`` ``(batch, classes, h, w)``: the Grad-CAM map of every class on the
last layer whose map is at least 7x7 (the last feature map when it is that large; see
:func:`lightlayers.deploy.export.deployable_for`); ``cam_side`` is the map's own
resolution when it was stretched over the image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from lightlayers.deploy.errors import DeployError

__all__ = ["CARD_FORMAT", "ModelCard", "describe_preprocessing"]

# Written as the "format" entry: a reader refuses a file of another format version.
CARD_FORMAT = "lightlayers-classifier/1"


@dataclass(frozen=True)
class ModelCard:
    model: str
    seed: int
    protocol: str
    trial: str
    classes: list[str]
    positive_class: int | None
    # Binary decision threshold chosen on validation (protocol threshold val_youden), else None
    # (0.5 for a binary task: the most probable class).
    threshold: float | None
    image_size: int
    image_chans: int
    resize: str
    resample: str
    crop: int | None
    input_chans: int
    input_size: int
    mean: list[float] | None
    std: list[float] | None
    data: str
    data_fingerprint: dict[str, Any]
    test_metrics: dict[str, Any]
    weights: str
    precision: str  # "fp32" or "int8"
    lightlayers_version: str
    cam: bool
    # Validation score the trial was chosen on: {"key": "val_acc", "value": ..., "epoch": ...}.
    chosen_on: dict[str, Any] = field(default_factory=dict)
    # The whole way from a file to the model's input, in words a reader can check against
    # their own pipeline: the cut the source itself made (a MedMNIST .npz holds the centre
    # square of each image), the decode resize, scaling, normalisation and channels. The
    # fields above are what predict executes; this says what they mean.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # The Grad-CAM map's own resolution over the image when the ``cam`` output is finer than
    # the layer it comes from (a model that pads a small input: its map is stretched over the
    # padded input and the image's square cut out); None: the output's own side.
    cam_side: int | None = None

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`lightlayers.data.DeviceLoader` for this model."""
        opts: dict[str, Any] = {}
        if self.mean is not None and self.std is not None:
            opts["mean"], opts["std"] = list(self.mean), list(self.std)
        if self.input_chans != self.image_chans:
            opts["out_chans"] = self.input_chans
        if self.crop is not None and self.crop != self.image_size:
            opts["crop"] = self.crop
        return opts

    def predicted(self, probs: Any) -> Any:
        """Predicted class indices of ``probs`` (N, classes), as the trial's metrics decided."""
        import numpy as np

        probs = np.asarray(probs)
        if self.positive_class is not None and probs.shape[1] == 2:
            # As lightlayers.metrics scores a binary task: positive when p >= threshold.
            pos, thr = self.positive_class, 0.5 if self.threshold is None else self.threshold
            return np.where(probs[:, pos] >= thr, pos, 1 - pos)
        return probs.argmax(1)

    def to_props(self) -> dict[str, str]:
        """Every field as one string entry (JSON), plus the format."""
        props = {k: json.dumps(v, sort_keys=True) for k, v in dataclasses.asdict(self).items()}
        return {"format": json.dumps(CARD_FORMAT), **props}

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> ModelCard:
        """The card of a file's metadata; a :class:`DeployError` naming ``where`` when the file
        was not written by ``lightlayers export`` or by a newer format."""
        fmt = props.get("format")
        if isinstance(fmt, str) and fmt.startswith('"'):
            # JSON like every other entry; files written before that hold the bare name.
            with contextlib.suppress(ValueError):
                fmt = json.loads(fmt)
        if fmt is None:
            raise DeployError(
                f"{where} holds no lightlayers metadata (not written by `lightlayers export`); "
                "export the model with `lightlayers export RUN_DIR --out FILE`")
        if fmt != CARD_FORMAT:
            raise DeployError(f"{where} is of format {fmt!r}; this lightlayers reads "
                              f"{CARD_FORMAT!r}: export it again with this version")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in props:
                if f.default is not dataclasses.MISSING or \
                        f.default_factory is not dataclasses.MISSING:
                    continue
                raise DeployError(f"{where}: its metadata lacks {f.name!r}; export it again")
            try:
                values[f.name] = json.loads(props[f.name])
            except (ValueError, TypeError, RecursionError) as e:
                raise DeployError(f"{where}: its metadata entry {f.name!r} is not JSON ({e}); "
                                  "export it again") from e
        _check_values(values, where)
        return cls(**values)


def describe_preprocessing(*, source_kind: str, source_name: str, resize: str,
                           image_size: int, image_chans: int, input_chans: int,
                           crop: int | None, mean: list[float] | None,
                           std: list[float] | None) -> dict[str, Any]:
    """The card's ``preprocessing`` entry: each step from a source's image to the model's
    input, as recorded with the data and the trial."""
    from lightlayers.data.registry import MEDMNIST_LABELS

    flag = source_name.split("_")[0].split(".")[0].lower()
    if source_kind == "npz" and flag in MEDMNIST_LABELS:
        cut = ("centre square of each image, resized by MedMNIST (the .npz's own "
               "preprocessing); new images are cut the same way (resize: crop)")
    elif source_kind in ("npz", "idx", "digits"):
        cut = f"as stored in the source ({source_kind}); its own cut is not recorded"
    else:
        cut = "the whole image file, cut by the resize step"
    steps = {"stretch": "whole image to the square side, aspect ratio ignored",
             "crop": "centre square, then to the side"}
    return {
        "source_cut": cut,
        "resize": f"{resize}: {steps.get(resize, 'central fractions W x H, then to the side')}"
                  f" ({image_size} px)",
        "center_crop": None if crop is None or crop == image_size else f"{crop} px",
        "scaling": "uint8 0-255 to float 0-1 (x / 255)",
        "normalisation": ("none" if mean is None
                          else "(x - mean) / std per channel, after the scaling"),
        "mean": mean, "std": std,
        "channels": (f"{image_chans} decoded" + (f", repeated to {input_chans}"
                                                  if input_chans != image_chans else "")),
    }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


_STR_FIELDS = ("model", "protocol", "trial", "resize", "resample", "data", "weights",
               "precision", "lightlayers_version")
_DICT_FIELDS = ("data_fingerprint", "test_metrics", "chosen_on", "preprocessing")


def _check_values(v: dict[str, Any], where: str) -> None:
    """Every card field of the type and range prediction relies on, and the sizes agreeing
    with each other: a DeployError naming the entry, its value and what it must be. (A card
    is read from a file anyone can edit; a wrong type would otherwise fail deep in
    prediction.)"""

    def bad(name: str, must: str) -> DeployError:
        shown = json.dumps(v[name])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return DeployError(f"{where}: its metadata entry {name!r} is {shown}; it must be "
                           f"{must}. Export the model again with `lightlayers export`")

    for name in _STR_FIELDS:
        if name in v and not isinstance(v[name], str):
            raise bad(name, "a string")
    for name in _DICT_FIELDS:
        if name in v and not isinstance(v[name], dict):
            raise bad(name, "a JSON object")
    if not _is_int(v["seed"]):
        raise bad("seed", "an integer")
    if not isinstance(v["cam"], bool):
        raise bad("cam", "true or false")
    classes = v["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise bad("classes", "a list of at least 2 distinct, non-empty class names")
    pos = v["positive_class"]
    if pos is not None and not (_is_int(pos) and 0 <= pos < len(classes)):
        raise bad("positive_class", f"null or a class index in 0..{len(classes) - 1}")
    thr = v["threshold"]
    if thr is not None and not (_is_number(thr) and 0 <= thr <= 1):
        raise bad("threshold", "null or a number in [0, 1]")
    for name in ("image_chans", "input_chans"):
        if not _is_int(v[name]) or v[name] not in (1, 3):
            raise bad(name, "1 or 3")
    if v["image_chans"] == 3 and v["input_chans"] == 1:
        raise bad("input_chans", f"{v['image_chans']} (3-channel images cannot feed 1 channel)")
    from lightlayers.data import DataError
    from lightlayers.data.preprocess import center_fractions, max_image_pixels

    try:
        limit = max_image_pixels()  # the decoder could not make a larger image
    except DataError as e:
        raise DeployError(str(e)) from e
    for name in ("image_size", "input_size"):
        if not (_is_int(v[name]) and v[name] >= 1 and v[name] ** 2 <= limit):
            raise bad(name, f"a side in pixels from 1 to {math.isqrt(limit)}")
    side = v.get("cam_side")
    if side is not None and not (_is_int(side) and 1 <= side <= v["input_size"]):
        raise bad("cam_side", f"null or a side from 1 to input_size ({v['input_size']})")
    try:
        center_fractions(v["resize"])
    except ValueError as e:
        raise bad("resize", str(e).removeprefix("must be ")) from None
    crop, size = v["crop"], v["image_size"]
    if crop is not None and not (_is_int(crop) and 1 <= crop <= size):
        raise bad("crop", f"null or a side from 1 to image_size ({size})")
    seen = size if crop is None else crop
    if v["input_size"] != seen:
        raise bad("input_size", f"{seen}, the side of the image the model sees (image_size "
                                f"{size}, crop {crop})")
    if (v["mean"] is None) != (v["std"] is None):
        raise bad("mean", "given with std, or both null")
    for name in ("mean", "std"):
        vals = v[name]
        if vals is None:
            continue
        if not (isinstance(vals, list) and len(vals) in (1, v["input_chans"])
                and all(_is_number(x) for x in vals)
                and (name == "mean" or all(x > 0 for x in vals))):
            raise bad(name, f"null or a list of 1 or {v['input_chans']} finite numbers"
                            + (" above 0" if name == "std" else ""))
