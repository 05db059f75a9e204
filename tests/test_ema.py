"""Weight averaging (protocol ``ema``): the weights a fit keeps are the exponential moving
average of the weights after each optimizer step, computed here by hand from a plain fit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from lightlayers.config import ConfigError, Protocol, load_config
from lightlayers.models import create_model
from lightlayers.train import TensorLoader, fit


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    return x, (x[:, 0].mean((1, 2)) > 0).long()


def _fit(protocol: Protocol) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]], object]:
    """A fit of a LightLayers model, and its parameters after every optimizer step."""
    torch.manual_seed(0)
    model = create_model("study-light-k1", num_classes=2, in_chans=3)
    x, y = _data(96, 0)
    xv, yv = _data(40, 1)
    steps: list[dict[str, torch.Tensor]] = []

    def snapshot(opt, args, kwargs) -> None:
        steps.append({k: p.detach().clone() for k, p in model.named_parameters()})

    handle = register_optimizer_step_post_hook(snapshot)
    try:
        res = fit(model, TensorLoader(x, y, 32, shuffle=True), TensorLoader(xv, yv, 32),
                  protocol, torch.device("cpu"), train_labels=y.numpy(), num_classes=2)
    finally:
        handle.remove()
    return model, steps, res


def test_kept_weights_are_the_moving_average_of_every_step() -> None:
    base = replace(Protocol(), epochs=3, batch_size=32, select="last", lr=0.01, compile="off")
    plain, steps, plain_res = _fit(base)
    decay = 0.8
    averaged, steps_again, res = _fit(replace(base, ema=decay))
    assert len(steps) == len(steps_again) == 9  # 3 batches x 3 epochs
    # Averaging does not change the training itself: the same weights after every step.
    for a, b in zip(steps, steps_again, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # By hand: the first step's weights, then w_ema <- decay * w_ema + (1 - decay) * w.
    expected = dict(steps[0])
    for s in steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * s[k] for k in s}
    for k, p in averaged.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
        assert not torch.equal(p.detach(), dict(plain.named_parameters())[k].detach()), k
    # Validation judged the averaged weights, so its numbers differ from the plain fit's.
    assert [h["train_loss"] for h in res.history] == [h["train_loss"]
                                                      for h in plain_res.history]
    assert [h["val_loss"] for h in res.history] != [h["val_loss"] for h in plain_res.history]


def test_ema_setting_is_checked() -> None:
    assert load_config(None, data="digits", protocol_overrides={"ema": 0.999}
                       ).resolved_protocol().ema == 0.999
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match=r"ema: must be in \(0, 1\)"):
            load_config(None, data="digits", protocol_overrides={"ema": bad}).resolved_protocol()
