"""Every fast path computes what the plain one does: LightConv2d's CPU rewrites against the
two-convolution formula, channels-last against NCHW training, compiled against eager training,
and the trainer's choices (auto compile, fallbacks, fused Adam, the cached L2 term)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightlayers.train as train_mod
from lightlayers import LightConv2d, light_penalty
from lightlayers.config import ConfigError, Protocol, StudyConfig
from lightlayers.layers._light_fast import light_conv2d_fast
from lightlayers.models import create_model
from lightlayers.train import TensorLoader, TrialError, evaluate, fit

CL = torch.channels_last


def reference(x, w1, b1, w2, b2, stride, padding):
    return F.conv2d(F.relu(F.conv2d(x, w1, b1, stride, padding)), w2, b2, 1, padding)


def grads(fn, x, params, g):
    y = fn(x, *params)
    return (y, *torch.autograd.grad(y, [x, *[p for p in params[:4] if p is not None]], g))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kernel,k,cin,f,stride,padding", [
    (1, 1, 3, 8, 1, 0), (1, 5, 8, 16, 1, 0), (1, 3, 16, 32, 1, 0),  # batched matmuls
    (1, 2, 16, 32, 2, 0), (3, 1, 3, 8, 1, 1), (3, 2, 8, 16, 2, 1), (5, 1, 2, 3, 1, 0),
])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_light_conv_equals_the_formula(layout, kernel, k, cin, f, stride, padding, bias):
    gen = torch.Generator().manual_seed(k * 100 + cin)
    x = torch.randn(3, cin, 9, 10, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    w1 = torch.randn(k, cin, kernel, kernel, generator=gen, requires_grad=True)
    w2 = torch.randn(f, k, kernel, kernel, generator=gen, requires_grad=True)
    # Negative first biases make relu cut: the mask must match too.
    b1 = (torch.randn(k, generator=gen) - 0.5).requires_grad_() if bias else None
    b2 = torch.randn(f, generator=gen, requires_grad=True) if bias else None
    params = [w1, b1, w2, b2]
    st, pad = (stride, stride), (padding, padding)
    g = torch.randn_like(reference(x, *params, st, pad))
    want = grads(lambda x, *p: reference(x, *p, st, pad), x, params, g)
    got = grads(lambda x, *p: light_conv2d_fast(x, *p, st, pad), x, params, g)
    assert got[0].shape == want[0].shape
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fast_path_avoids_the_slow_convolutions(monkeypatch):
    """The rewrite is taken (a broken dispatch would pass the equality test silently)."""
    calls = []
    real = F.conv2d

    def counting(x, w, *a, **kw):
        calls.append(tuple(w.shape))
        return real(x, w, *a, **kw)

    monkeypatch.setattr(F, "conv2d", counting)
    LightConv2d(8, 16, 1, k=2, impl="fast")(torch.randn(2, 8, 5, 5))
    assert calls == []  # batched matmuls
    LightConv2d(8, 16, 1, k=2, impl="fast")(torch.randn(2, 8, 5, 5).contiguous(memory_format=CL))
    LightConv2d(8, 16, 3, k=1, impl="fast")(torch.randn(2, 8, 5, 5))
    LightConv2d(8, 16, 1, k=2, impl="reference")(torch.randn(2, 8, 5, 5))
    assert calls == [(2, 8, 1, 1), (16, 2, 1, 1), (1, 8, 3, 3), (16, 1, 3, 3),
                     (2, 8, 1, 1), (16, 2, 1, 1)]


def test_auto_impl_keeps_the_plain_formula_in_traced_graphs():
    layer = LightConv2d(3, 8, 1, k=2)
    x = torch.randn(2, 3, 6, 6)
    assert layer._use_fast(x)  # eager on the CPU
    graph = str(torch.jit.trace(layer, x).graph)
    assert "aten::_convolution" in graph and "baddbmm" not in graph
    with pytest.raises(ValueError, match="impl must be"):
        LightConv2d(3, 8, 1, k=2, impl="quick")
    assert "impl='reference'" in repr(LightConv2d(3, 8, 1, k=2, impl="reference"))


# ----------------------------------------------------------------------------- the trainer


def tiny_data(n=96, side=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side, side, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable
    return x, y


def run_fit(model, protocol, n=96, batch=32, **kw):
    x, y = tiny_data(n)
    xv, yv = tiny_data(40, seed=1)
    proto = replace(protocol, batch_size=batch)
    res = fit(model, TensorLoader(x, y, batch, shuffle=True), TensorLoader(xv, yv, batch), proto,
              torch.device("cpu"), train_labels=y.numpy(), num_classes=2, **kw)
    return res


def small_light_model():
    torch.manual_seed(0)
    return create_model("study-light-k1", num_classes=2, in_chans=3)


# Float rounding differs between the paths; Adam turns a tiny gradient difference on a
# near-zero gradient into up to one lr-sized step, so weights are compared to about the lr
# while losses, which a wrong computation would move far more, are compared tightly.
LOSS_REL = 1e-3
WEIGHT_TOL = 1e-3


def states_close(a, b, tol, skip=()):
    """``skip``: biases feeding a BatchNorm, whose gradient is zero up to rounding noise that
    Adam scales to full steps of random sign on every path alike."""
    for k, v in a.state_dict().items():
        if k not in skip:
            torch.testing.assert_close(v, b.state_dict()[k], rtol=tol, atol=tol, msg=k)


def before_bn(model):
    return {f"{name}.bias2" for name, m in model.named_modules() if isinstance(m, LightConv2d)}


def test_channels_last_training_equals_nchw():
    base = Protocol(epochs=2, compile="off")
    nchw, cl = small_light_model(), small_light_model()
    r1 = run_fit(nchw, replace(base, memory_format="contiguous"))
    r2 = run_fit(cl, replace(base, memory_format="channels_last"))
    assert r1.speed["memory_format"] == "contiguous"
    assert r2.speed["memory_format"] == "channels_last"
    assert cl.stages[0].conv1.weight1.is_contiguous(memory_format=CL)
    for a, b in zip(r1.history, r2.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_REL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=LOSS_REL)
    states_close(nchw, cl, WEIGHT_TOL, skip=before_bn(nchw))  # every one feeds a BN


def test_each_fit_compiles_its_model_past_dynamos_recompile_limit():
    """A study compiles many models in one process: every trial must really be compiled, not
    fall back to eager once dynamo's recompile limit is reached (here lowered to 1)."""
    from torch._dynamo.utils import counters

    with torch._dynamo.config.patch(recompile_limit=1):
        for width in (3, 4, 5):
            torch.manual_seed(0)
            net = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(width, 2))
            before = counters["stats"]["unique_graphs"]
            r = run_fit(net, Protocol(epochs=1, compile="default"), n=32)
            assert r.speed["compile"] == "default"
            assert counters["stats"]["unique_graphs"] > before, f"width {width} ran eagerly"


def test_compiled_training_equals_eager():
    """torch.compile on a tiny model (compiling a study model would take half a minute)."""
    def model():
        torch.manual_seed(0)
        net = nn.Sequential(LightConv2d(3, 4, 3, k=1), nn.BatchNorm2d(4), nn.ReLU(),
                            LightConv2d(4, 4, 1, k=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 2))
        return net

    eager, compiled = model(), model()
    r1 = run_fit(eager, Protocol(epochs=2, compile="off"), n=80)
    r2 = run_fit(compiled, Protocol(epochs=2, compile="default"), n=80)
    assert r1.speed["compile"] is None and r2.speed["compile"] == "default"
    assert [h["compiled"] for h in r2.history] == [True, True]
    # The compile time is recorded once, in the epoch whose time includes it, and noted.
    first, second = r2.history
    assert first["compile_s"] == r2.speed["compile_s"] and "compile_s" not in second
    assert first["compile_s"] <= first["time_s"]
    assert f"torch.compile(mode='default'): {first['compile_s']:.1f}s to compile" in r2.notes
    for a, b in zip(r1.history, r2.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_REL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=LOSS_REL)
    states_close(eager, compiled, WEIGHT_TOL, skip={"0.bias2"})


class FakeCompiled(nn.Module):
    """Stands in for torch.compile's result: records calls, optionally fails."""

    def __init__(self, model, fail=False):
        super().__init__()
        self.model, self.fail, self.calls = model, fail, 0

    def forward(self, x):
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend exploded\nsecond line")
        return self.model(x)


def fake_compile(monkeypatch, fail=False):
    made = []

    def compile_(model, **kw):
        made.append((FakeCompiled(model, fail), kw))
        return made[-1][0]

    monkeypatch.setattr(torch, "compile", compile_)
    return made


def test_auto_compile_decides_from_timed_eager_steps(monkeypatch):
    made = fake_compile(monkeypatch)
    # Short run: gaining a few milliseconds never repays a compile.
    r = run_fit(small_light_model(), Protocol(epochs=2, compile="auto"), n=96, batch=8)
    assert made == [] and r.speed["compile"] is None
    assert any(n.startswith("compile auto: off") for n in r.notes)
    # As if compiling were free: compiled after the probe steps, for full batches only.
    monkeypatch.setattr(train_mod, "COMPILE_COST_S", 0.0)
    r = run_fit(small_light_model(), Protocol(epochs=2, compile="auto"), n=100, batch=8)
    (fake, kw), = made
    assert kw == {"mode": "default", "dynamic": False}
    full = 100 // 8
    assert fake.calls == 2 * full - (train_mod.PROBE_STEPS + 1)  # the last, partial batch eager
    assert r.speed["compile"] == "default" and [h["compiled"] for h in r.history] == [True] * 2


def test_compile_failure_falls_back_only_in_auto(monkeypatch):
    fake_compile(monkeypatch, fail=True)
    monkeypatch.setattr(train_mod, "COMPILE_COST_S", 0.0)
    r = run_fit(small_light_model(), Protocol(epochs=1, compile="auto"), n=96, batch=8)
    assert r.speed["compile"] is None and np.isfinite(r.history[0]["train_loss"])
    assert any("torch.compile failed (RuntimeError: backend exploded)" in n for n in r.notes)
    with pytest.raises(TrialError, match=r"torch\.compile.*backend exploded"):
        run_fit(small_light_model(), Protocol(epochs=1, compile="default"), n=96, batch=8)


def test_compile_is_refused_where_it_cannot_help():
    head = nn.Linear(6, 2)
    x = torch.randn(40, 6)
    y = (x[:, 0] > 0).long()
    with pytest.raises(TrialError, match="no convolutions"):
        fit(head, TensorLoader(x, y, 8), TensorLoader(x, y, 8),
            Protocol(epochs=1, compile="default"), torch.device("cpu"), train_labels=y.numpy(),
            num_classes=2)
    r = fit(head, TensorLoader(x, y, 8), TensorLoader(x, y, 8), Protocol(epochs=1),
            torch.device("cpu"), train_labels=y.numpy(), num_classes=2)
    assert r.speed["compile"] is None and r.speed["optimizer"] == "fused"


def test_speed_settings_are_validated():
    with pytest.raises(ConfigError, match="compile"):
        StudyConfig(protocol_overrides={"compile": "fast"}).resolved_protocol()
    with pytest.raises(ConfigError, match="memory_format"):
        StudyConfig(protocol_overrides={"memory_format": "nhwc"}).resolved_protocol()
    p = StudyConfig(protocol_overrides={"compile": "off", "memory_format": "channels_last"})
    assert p.resolved_protocol().compile == "off"


def test_fused_adam_and_cached_penalty_match_the_plain_step():
    """One trainer step equals a hand-written step with for-loop Adam and light_penalty."""
    x, y = tiny_data(32)
    ours, plain = small_light_model(), small_light_model()
    run_fit(ours, Protocol(epochs=1, compile="off"), n=32, batch=32)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3, eps=1e-7, foreach=False)
    plain.train()
    gen = torch.Generator().manual_seed(0 * 1_000_003)  # TensorLoader's first epoch order
    idx = torch.randperm(32, generator=gen)
    loss = F.cross_entropy(plain(x[idx]), y[idx]) + light_penalty(plain)
    opt.zero_grad()
    loss.backward()
    opt.step()
    plain.eval()
    states_close(ours, plain, 1e-5, skip=before_bn(ours))
    penalty = train_mod._Penalty(plain)
    torch.testing.assert_close(penalty(), light_penalty(plain))


def test_evaluate_feeds_a_channels_last_model_in_its_layout():
    model = small_light_model().to(memory_format=CL)
    assert train_mod.model_memory_format(model) == CL
    x, y = tiny_data(20)
    a = evaluate(model, TensorLoader(x, y, 8), torch.device("cpu"))
    model.to(memory_format=torch.contiguous_format)
    b = evaluate(model, TensorLoader(x, y, 8), torch.device("cpu"))
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-6)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
