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
last feature map.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lightlayers.deploy.errors import DeployError

__all__ = ["CARD_FORMAT", "ModelCard"]

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
        return {"format": CARD_FORMAT, **props}

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> ModelCard:
        """The card of a file's metadata; a :class:`DeployError` naming ``where`` when the file
        was not written by ``lightlayers export`` or by a newer format."""
        fmt = props.get("format")
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
            except ValueError as e:
                raise DeployError(f"{where}: its metadata entry {f.name!r} is not JSON ({e}); "
                                  "export it again") from e
        return cls(**values)
