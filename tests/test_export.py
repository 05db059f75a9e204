"""The layers behave as ordinary PyTorch modules: serialisation, tracing, compile, ONNX."""

import io

import numpy as np
import pytest
import torch

import lightlayers as L


@pytest.fixture(scope="module")
def study_model():
    torch.manual_seed(0)
    model = L.create_model("study-light-k2").eval()
    # Non-trivial BN statistics so the export is checked against more than identity BN.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_state_dict_round_trip(study_model, x, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(study_model.state_dict(), path)
    fresh = L.create_model("study-light-k2").eval()
    assert not torch.allclose(fresh(x), study_model(x))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(fresh(x), study_model(x), rtol=0, atol=0)


def test_jit_trace(study_model, x):
    traced = torch.jit.trace(study_model, x)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    torch.testing.assert_close(loaded(x), study_model(x))


@pytest.mark.slow
def test_torch_compile(study_model, x):
    compiled = torch.compile(study_model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), study_model(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_matches_onnxruntime(study_model, x, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="install lightlayers[test]")
    path = tmp_path / "study.onnx"
    torch.onnx.export(study_model, (x,), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):
        (out,) = session.run(None, {"images": batch.numpy()})
        np.testing.assert_allclose(out, study_model(batch).detach().numpy(), rtol=1e-4, atol=1e-5)
