"""Transfer learning without network: local weights files, the torch hub cache, cached features."""

import pytest
import torch
import torchvision
from conftest import SHARED

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.features import compute_features
from lightlayers.models.transfer import BACKBONES, WeightsError, backbone_stages
from lightlayers.runfolder.store import ResultsStore
from lightlayers.train import TensorLoader


def _random_resnet18_state(seed=0):
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith("running_var"):
            out[k] = torch.rand_like(v) + 0.5  # variances must stay positive
        elif v.is_floating_point():
            out[k] = torch.randn_like(v) * 0.05
        else:
            out[k] = v
    return out


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "resnet18-local.pth"
    torch.save(_random_resnet18_state(), path)
    return path


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_comes_from_the_weights_metadata(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    t = weights.transforms()
    model = L.create_model(f"transfer-{name}", weights=None)
    pre = model.preprocess
    assert (pre.crop_size, pre.resize_size) == (t.crop_size[0], t.resize_size[0])
    assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std)
    assert pre.interpolation == t.interpolation.value
    info = L.model_info(f"transfer-{name}")
    assert info.input_size == t.crop_size[0]
    assert info.min_input_size == weights.meta["min_size"][0]
    # The head sits on the features torchvision's own classifier read.
    kw = {"init_weights": True} if name == "inception_v3" else {}
    full = getattr(torchvision.models, name)(weights=None, **kw)
    first_linear = next(m for m in list(full.children())[-1].modules()
                        if isinstance(m, torch.nn.Linear))
    assert model.head.in_features == model.num_features == first_linear.in_features
    assert model.weights == "none"


def test_local_weights_file_is_loaded(weights_file, tmp_path):
    state = torch.load(weights_file, weights_only=True)
    for path in (weights_file, tmp_path / "w.safetensors"):
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(path))
        model = L.create_model("transfer-resnet18", weights=str(path))
        torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])
        torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var,
                                   state["layer4.1.bn2.running_var"])
        assert model.weights == str(path)
        assert L.count_params(model).trainable == 512 * 2 + 2


def test_hub_cache_file_is_used_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    state = _random_resnet18_state(seed=1)
    torch.save(state, cached)
    model = L.create_model("transfer-resnet18")  # default: the DEFAULT ImageNet weights
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])
    assert model.weights == "ResNet18_Weights.IMAGENET1K_V1"

    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="delete the file") as e:
        L.create_model("transfer-resnet18")
    assert str(cached) in str(e.value)


def test_offline_without_cached_weights_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as e:
        L.create_model("transfer-resnet18")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "empty") in msg
    assert "--weights" in msg


def test_mismatched_weights_file_lists_the_keys(tmp_path):
    state = _random_resnet18_state()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        L.create_model("transfer-resnet18", weights=str(path))
    msg = str(e.value)
    assert "missing keys (1): layer1.0.conv1.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "mis-shaped keys (1): layer2.0.conv1.weight" in msg
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        L.create_model("transfer-resnet18", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        L.create_model("transfer-resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="valid: DEFAULT"):
        L.create_model("transfer-resnet18", weights="IMAGENET9K")


def test_cached_features_give_the_full_model_logits(weights_file):
    model = L.create_model("transfer-resnet18", weights=str(weights_file)).eval()
    x = torch.randn(10, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 2
    feats, labels = compute_features(model.backbone, TensorLoader(x, y, 4), torch.device("cpu"),
                                     amp=False)
    assert torch.equal(labels, y)
    with torch.no_grad():
        torch.testing.assert_close(model.head(feats), model(x), rtol=1e-5, atol=1e-5)


def test_finetune_last_n_and_batchnorm_modes():
    model = L.create_model("transfer-resnet18", weights=None, finetune="last-2")
    stages = backbone_stages(model.backbone)
    assert [type(s).__name__ for s in stages[-2:]] == ["Sequential", "Sequential"]
    trainable = {n.split(".")[1] for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {"layer3", "layer4"}
    assert not model.frozen
    model.train()
    assert model.backbone.layer4.training and not model.backbone.layer1.training
    assert not model.backbone.bn1.training
    groups = model.param_groups(1e-3, 0.1)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-4)
    assert L.create_model("transfer-resnet18", weights=None, finetune="all").frozen is False
    with pytest.raises(ValueError, match=r"last-1 \.\. last-6"):
        L.create_model("transfer-resnet18", weights=None, finetune="last-9")


def test_run_with_local_weights_then_feature_cache_hit(weights_file, tmp_path, capfd):
    data = SHARED / "chest_xray_pneumonia" / "chest_xray_224.tar.gz"
    args = ["run", "--data", str(data), "--models", "transfer-resnet18", "--weights",
            str(weights_file), "--epochs", "2", "--size", "32", "--no-report",
            "--protocol", "seed"]  # no augmentation: the frozen backbone's features are cached
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    assert "computed once" in capfd.readouterr().err
    assert cli([*args, "--out", str(tmp_path / "b")]) == 0
    assert "reused from the feature cache" in capfd.readouterr().err
    (a,) = ResultsStore(tmp_path / "a" / "results.db").trials()
    (b,) = ResultsStore(tmp_path / "b" / "results.db").trials()
    for t in (a, b):
        assert t["status"] == "done" and t["params_trainable"] == 1026
        assert t["extra"]["weights"] == str(weights_file)
    assert a["feature_time_s"] > 0 and b["feature_time_s"] == 0.0
    assert not a["extra"]["feature_cache_hit"] and b["extra"]["feature_cache_hit"]
    assert a["accuracy"] == b["accuracy"]  # same features, same seed: same result
