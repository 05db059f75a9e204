"""Property-based fuzzing of the ONNX model-card reader (``lightlayers.deploy.export.read_card``):
whatever the metadata strings, the graph's shapes or the file's bytes, the answer is a card
that agrees with its graph or one DeployError naming the file; never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from model_files import tiny_card, tiny_onnx

from lightlayers.deploy import DeployError
from lightlayers.deploy.card import ModelCard
from lightlayers.deploy.export import read_card

FUZZ = fuzz(150)

# Protobuf strings are UTF-8: no lone surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8)
FIELDS = [*tiny_card().to_props()]


def _read(blob: bytes) -> ModelCard | DeployError:
    """read_card on ``blob`` saved as a .onnx file, with the property: a card, or a
    DeployError naming the file."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(blob)
        try:
            card = read_card(path)
        except DeployError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            return e
    assert isinstance(card, ModelCard)
    assert isinstance(card.classes, list) and len(card.classes) >= 2
    assert card.input_chans in (1, 3) and card.input_size >= 1
    return card


@st.composite
def metadata(draw: st.DrawFn) -> tuple[dict[str, str], int, int, int]:
    """Card entries (a valid card's, some replaced, dropped or added) and a graph's channels,
    side and classes (usually the card's)."""
    props = dict(tiny_card().to_props())
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(FIELDS) | TEXT)
        how = draw(st.sampled_from(["json", "text", "drop"]))
        if how == "drop":
            props.pop(key, None)
        elif how == "json":
            props[key] = json.dumps(draw(JSON_VALUES))
        else:
            props[key] = draw(TEXT)
    chans = draw(st.sampled_from([1, 1, 1, 3]))
    side = draw(st.sampled_from([8, 8, 8, 4, 32]))
    classes = draw(st.sampled_from([2, 2, 2, 3, 10]))
    return props, chans, side, classes


@FUZZ
@given(metadata())
def test_fuzz_card_metadata(drawn: tuple[dict[str, str], int, int, int]) -> None:
    props, chans, side, classes = drawn
    result = _read(tiny_onnx(props=props, chans=chans, size=side, classes=classes))
    if isinstance(result, ModelCard):
        # A card accepted is one the graph agrees with.
        assert (result.input_chans, result.input_size, len(result.classes)) == \
            (chans, side, classes)


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del buf[pos:pos + draw(st.integers(1, 64))]
        else:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


VALID = tiny_onnx()


@FUZZ
@given(st.data())
def test_fuzz_card_bytes(data: st.DataObject) -> None:
    # Arbitrary bytes, or (more often) a valid file with bytes flipped, cut or inserted.
    if data.draw(st.integers(0, 3)) == 0:
        blob = data.draw(st.binary(max_size=256))
    else:
        blob = _mutate(VALID, data.draw)
    _read(blob)


def test_the_valid_file_reads() -> None:
    card = _read(VALID)
    assert isinstance(card, ModelCard) and card == tiny_card()
    assert np.isclose(card.predicted(np.array([[0.2, 0.8]]))[0], 1)
