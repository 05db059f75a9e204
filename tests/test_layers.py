import pytest
import torch
import torch.nn.functional as F

from lightlayers import LightConv2d, LightLinear, light_penalty


def reference_light_conv(x, layer):
    pad = layer.padding
    h = F.relu(F.conv2d(x, layer.weight1, layer.bias1, padding=pad))
    return F.conv2d(h, layer.weight2, layer.bias2, padding=pad)


@pytest.mark.parametrize("kernel,k,cin,cout", [(3, 1, 3, 8), (1, 2, 8, 16), (5, 4, 2, 3),
                                               ((3, 1), 3, 4, 4)])
def test_light_conv_matches_two_conv_formula(kernel, k, cin, cout):
    torch.manual_seed(0)
    layer = LightConv2d(cin, cout, kernel, k=k, bias_init="glorot")
    x = torch.randn(2, cin, 9, 11)
    y = layer(x)
    assert y.shape == (2, cout, 9, 11)  # "same" padding keeps the size
    torch.testing.assert_close(y, reference_light_conv(x, layer))


@pytest.mark.parametrize("k,cin,f,ks", [(1, 3, 8, 3), (5, 16, 32, 3), (3, 8, 16, 1)])
def test_light_conv_param_count(k, cin, f, ks):
    layer = LightConv2d(cin, f, ks, k=k)
    assert sum(p.numel() for p in layer.parameters()) == ks * ks * k * (cin + f) + k + f
    assert layer.weight1.shape == (k, cin, ks, ks) and layer.weight2.shape == (f, k, ks, ks)
    nobias = LightConv2d(cin, f, ks, k=k, bias=False)
    assert sum(p.numel() for p in nobias.parameters()) == ks * ks * k * (cin + f)


def test_light_conv_init():
    torch.manual_seed(0)
    layer = LightConv2d(64, 64, 3, k=32)
    assert torch.all(layer.bias1 == 0) and torch.all(layer.bias2 == 0)
    # Glorot-uniform bound sqrt(6 / (fan_in + fan_out)) with fan = channels * 9.
    bound = (6 / (64 * 9 + 32 * 9)) ** 0.5
    assert layer.weight1.abs().max() <= bound
    assert layer.weight1.abs().max() > 0.9 * bound
    quirk = LightConv2d(3, 400, 3, k=400, bias_init="glorot")
    limit = (3 / 400) ** 0.5
    assert quirk.bias2.abs().max() <= limit and quirk.bias2.abs().max() > 0.9 * limit


def test_light_conv_receptive_field_is_5x5():
    layer = LightConv2d(1, 1, 3, k=1)
    with torch.no_grad():
        layer.weight1.fill_(1.0)
        layer.weight2.fill_(1.0)
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, 5] = 1.0
    touched = layer(x)[0, 0] != 0
    assert touched.sum() == 25 and layer.receptive_field() == (5, 5)


def test_light_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        LightConv2d(3, 8, 3, k=0)
    with pytest.raises(ValueError, match="odd kernel"):
        LightConv2d(3, 8, 2, k=1)
    with pytest.raises(ValueError, match="bias_init"):
        LightConv2d(3, 8, 3, k=1, bias_init="ones")
    layer = LightConv2d(3, 8, 3, k=1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(torch.zeros(1, 4, 8, 8))
    assert LightConv2d(3, 8, 2, k=1, padding="valid")(torch.zeros(1, 3, 8, 8)).shape[-1] == 6


def test_light_conv_penalty_and_repr():
    layer = LightConv2d(3, 8, 3, k=2)
    expected = 1e-4 * (layer.weight1.pow(2).sum() + layer.weight2.pow(2).sum())
    torch.testing.assert_close(layer.penalty(), expected)
    other = LightConv2d(8, 4, 1, k=1, l2=0.5)
    both = expected + 0.5 * (other.weight1.pow(2).sum() + other.weight2.pow(2).sum())
    torch.testing.assert_close(light_penalty(torch.nn.Sequential(layer, other)), both)
    # A module used twice is one set of weights: penalised once, as in Keras.
    torch.testing.assert_close(light_penalty(torch.nn.Sequential(layer, layer)), expected)
    assert light_penalty(torch.nn.Linear(2, 2)) == 0
    assert "k=2" in repr(layer) and "kernel_size=(3, 3)" in repr(layer)


def test_light_linear_formula_and_count():
    torch.manual_seed(0)
    layer = LightLinear(32, 10, k=8)
    with torch.no_grad():
        layer.bias.uniform_()
    x = torch.randn(5, 32)
    c = (2 / 10) ** 0.5
    torch.testing.assert_close(layer(x), x @ (c * layer.weight1) @ (c * layer.weight2) + layer.bias)
    assert sum(p.numel() for p in layer.parameters()) == 8 * (32 + 10) + 10
    assert torch.all(LightLinear(4, 3, k=1).bias == 0)
    with pytest.raises(ValueError, match="last dimension is 32"):
        layer(torch.zeros(2, 31))
    with pytest.raises(ValueError, match="k must be"):
        LightLinear(4, 3, k=-1)
    assert "k=8" in repr(layer)


def test_gradients_reach_every_parameter():
    layer = torch.nn.Sequential(LightConv2d(3, 4, 3, k=2), torch.nn.Flatten(),
                                LightLinear(4 * 6 * 6, 2, k=3))
    loss = layer(torch.randn(2, 3, 6, 6)).square().sum() + light_penalty(layer)
    loss.backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
