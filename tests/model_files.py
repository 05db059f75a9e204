"""Small ONNX model files with a lightlayers model card, built directly with ``onnx.helper``
(no training, no exporter), for tests of what reads them: ``read_card``, ``predict``.

Not a conftest: test modules import :func:`tiny_card` and :func:`tiny_onnx`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightlayers.deploy.card import ModelCard


def tiny_card(**changes: Any) -> ModelCard:
    """A valid card of a 2-class grey 8 px model; ``changes`` replace fields."""
    card = ModelCard(
        model="tiny", seed=0, protocol="seed", trial="t0", classes=["a", "b"],
        positive_class=1, threshold=None, image_size=8, image_chans=1, resize="stretch",
        resample="bilinear", crop=None, input_chans=1, input_size=8, mean=None, std=None,
        data="tiny", data_fingerprint={}, test_metrics={}, weights="tiny.pt",
        precision="fp32", lightlayers_version="0", cam=False)
    return card.replace(**changes)


def tiny_onnx(card: ModelCard | None = None, chans: int = 1, size: int | str = 8,
              classes: int = 2, props: dict[str, str] | None = None) -> bytes:
    """A serialized ONNX model: images (batch, chans, size, size) -> global average pool ->
    a (chans, classes) matrix -> softmax = probabilities (batch, classes). Its metadata is
    ``card``'s (``tiny_card()`` by default), or exactly ``props`` when given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.linspace(-1, 1, chans * classes, dtype=np.float32).reshape(chans, classes)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", chans, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["batch", classes])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entries = (card or tiny_card()).to_props() if props is None else props
    for k, v in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model.SerializeToString()
