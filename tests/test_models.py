import pytest
import torch

import lightlayers as L

# Totals (Keras convention) and trainable counts from the published models (DESIGN.md s.4).
STUDY = {1: (2753, 2417), 2: (4600, 4264), 3: (6447, 6111), 4: (8294, 7958), 5: (10141, 9805)}
PAPER = {1: 2649, 2: 4392, 3: 6135, 4: 7878, 5: 9621, 6: 11364}
CIFAR10 = {1: 5937, 2: 9592, 3: 13247, 4: 16902, 5: 20557}


@pytest.mark.parametrize("k", sorted(STUDY))
def test_study_light_counts(k):
    c = L.count_params(L.create_model(f"study-light-k{k}"))
    assert (c.total, c.trainable) == STUDY[k]
    assert c.total == 1847 * k + 906 and c.trainable == 1847 * k + 570


def test_study_light_any_k():
    assert L.count_params(L.create_model("study-light-k9")).total == 1847 * 9 + 906


def test_study_conv_counts():
    c = L.count_params(L.create_model("study-conv"))
    assert (c.total, c.trainable) == (31074, 30738)


@pytest.mark.parametrize("k", sorted(PAPER))
def test_paper_light_counts(k):
    assert L.count_params(L.create_model(f"paper-light-k{k}")).total == PAPER[k]


@pytest.mark.parametrize("name,total", [("paper-conv", 18818), ("paper-separable", 3611)])
def test_paper_baselines(name, total):
    assert L.count_params(L.create_model(name)).total == total


@pytest.mark.parametrize("k", sorted(CIFAR10))
def test_paper_cifar_light_counts(k):
    assert L.count_params(L.create_model(f"paper-cifar-light-k{k}")).total == CIFAR10[k]
    m100 = L.create_model(f"paper-cifar-light-k{k}", num_classes=100)
    assert L.count_params(m100).total == 3655 * k + 3092


@pytest.mark.parametrize("name,n10,n100", [("paper-cifar-conv", 76794, 82644),
                                           ("paper-cifar-separable", 14440, 20290)])
def test_paper_cifar_baselines(name, n10, n100):
    assert L.count_params(L.create_model(name)).total == n10
    assert L.count_params(L.create_model(name, num_classes=100)).total == n100


def test_transfer_inception_v3():
    m = L.create_model("transfer-inception_v3", weights=None)
    c = L.count_params(m)
    assert c.trainable == 4098
    backbone = sum(p.numel() for p in m.backbone.parameters())
    assert backbone == 21_785_568  # torchvision's headless InceptionV3 (study's TF-Hub: 21,802,784)
    m.train()
    assert not m.backbone.training and m.head.training
    bn = next(x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m(torch.randn(2, 3, 80, 80)).sum().backward()
    torch.testing.assert_close(bn.running_mean, before)  # frozen BN statistics do not move
    assert all(p.grad is None for p in m.backbone.parameters())


def test_count_params_str():
    assert str(L.count_params(L.create_model("study-light-k3"))) == "6,447 total, 6,111 trainable"


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="study-light-k1"):
        L.create_model("study-lite-k1")
    with pytest.raises(ValueError, match="unknown model"):
        L.create_model("no-such-thing")


def test_list_models_pattern_and_natural_order():
    names = L.list_models("study-light-*")
    assert names == [f"study-light-k{k}" for k in range(1, 6)]
    assert "transfer-inception_v3" in L.list_models()
    for required in ["study-conv", "study-residual-conv", "paper-conv", "paper-separable",
                     "paper-cifar-conv", "paper-cifar-separable", "transfer-resnet18",
                     "transfer-mobilenet_v3_small", "transfer-efficientnet_b0"]:
        assert required in L.list_models()


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        L.create_model("study-conv", num_classes=0)
    with pytest.raises(ValueError, match="3-channel"):
        L.create_model("transfer-resnet18", in_chans=1, weights=None)


@pytest.mark.parametrize("name", L.list_models())
def test_every_model_forward_on_cpu(name):
    torch.manual_seed(0)
    kw = {"weights": None} if name.startswith("transfer-") else {}
    model = L.create_model(name, num_classes=3, **kw).eval()
    info = model.model_info
    size = 80 if name == "transfer-inception_v3" else (32 if name.startswith("transfer") else 48)
    with torch.no_grad():
        y = model(torch.randn(2, info.in_chans, size, size))
    assert y.shape == (2, 3)
    assert torch.isfinite(y).all()


def test_study_conv_pads_small_inputs():
    model = L.create_model("study-conv").eval()
    with pytest.warns(UserWarning, match="zero-padding"), torch.no_grad():
        assert model(torch.randn(1, 3, 28, 28)).shape == (1, 2)
