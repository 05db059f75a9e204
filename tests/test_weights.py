"""Pretrained weights without network: every backbone from a state dict planted under
torchvision's official file name, every shipped config, the pre-flight step of a study, the
`weights` command, checksum-verified downloads from a local mirror, and Ray workers."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import PNEUMONIA_NPZ

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.config import load_config
from lightlayers.models.transfer import BACKBONES, resolve_model_weights
from lightlayers.models.weights import WeightsError, download_weights, hub_file
from lightlayers.runfolder.store import ResultsStore

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRANSFER = [f"transfer-{b}" for b in BACKBONES]


def official_file(backbone: str) -> str:
    return os.path.basename(torchvision.models.get_model_weights(backbone).DEFAULT.url)


def random_state(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of torchvision's full ImageNet architecture (InceptionV3 with its auxiliary
    classifier, as in the official file), with random values and sane BatchNorm statistics."""
    torch.manual_seed(seed)
    kw = {"init_weights": False} if backbone == "inception_v3" else {}
    state = getattr(torchvision.models, backbone)(weights=None, **kw).state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith("running_var"):
            out[k] = torch.rand_like(v) + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn_like(v) * 0.1
        elif v.is_floating_point():
            out[k] = torch.randn_like(v) * 0.02
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def planted_hub(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a state dict for every backbone of the zoo."""
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    for i, b in enumerate(BACKBONES):
        torch.save(random_state(b, i), ckpt / official_file(b))
    return home


@pytest.fixture
def use_hub(planted_hub, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(planted_hub))
    return planted_hub


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    """A few real chest X-rays per split (both classes), so a whole study takes seconds."""
    z = np.load(PNEUMONIA_NPZ)
    out = {}
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        labels = z[f"{split}_labels"].reshape(-1)
        idx = np.concatenate([np.flatnonzero(labels == c)[: n // 2] for c in (0, 1)])
        out[f"{split}_images"] = z[f"{split}_images"][idx]
        out[f"{split}_labels"] = z[f"{split}_labels"][idx]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, **out)
    return path


@pytest.mark.parametrize("backbone", BACKBONES)
def test_default_weights_come_from_the_hub_cache(use_hub, backbone):
    model = L.create_model(f"transfer-{backbone}")  # DEFAULT weights, no download
    planted = torch.load(hub_file(torchvision.models.get_model_weights(backbone).DEFAULT.url),
                         weights_only=True)
    own = model.backbone.state_dict()
    # Every backbone value comes from the file (DenseNet's keys as torchvision renames them).
    shared = [k for k in own if k in planted]
    assert len(shared) == len(own) or backbone == "densenet121"
    for k in shared:
        torch.testing.assert_close(own[k], planted[k])
    assert model.weights == str(torchvision.models.get_model_weights(backbone).DEFAULT)
    assert model.weights_info()["weights_verified"] is False  # a random file, not torchvision's
    counts = L.count_params(model)
    assert counts.trainable == model.num_features * 2 + 2


def test_inception_v3_with_real_weights_is_headless_and_returns_one_tensor(use_hub):
    model = L.create_model("transfer-inception_v3")
    assert model.backbone.AuxLogits is None and not model.backbone.aux_logits
    assert model.backbone.transform_input  # as torchvision builds it for its ImageNet weights
    assert sum(p.numel() for p in model.backbone.parameters()) == 21_785_568
    assert L.count_params(model).trainable == 4_098
    x = torch.randn(2, 3, 80, 80)
    for finetune in ("none", "last-2"):
        m = L.create_model("transfer-inception_v3", finetune=finetune).train()
        out = m(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
        assert isinstance(m.eval()(x), torch.Tensor)


def test_every_backbone_trains_one_epoch_with_its_default_weights(use_hub, tiny_npz, tmp_path,
                                                                  capfd):
    cfg = tmp_path / "all.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": str(tiny_npz), "models": TRANSFER, "epochs": 1, "size": 32,
        "sizes": {"transfer-inception_v3": 75}, "out": str(tmp_path / "run"),
    }))
    assert cli(["run", str(cfg), "--no-report"]) == 0
    err = capfd.readouterr().err
    assert "downloading" not in err
    trials = {t["model"]: t for t in ResultsStore(tmp_path / "run" / "results.db").trials()}
    assert set(trials) == set(TRANSFER)
    for name, t in trials.items():
        backbone = name.removeprefix("transfer-")
        assert t["status"] == "done", (name, t["error"])
        assert t["extra"]["weights"] == str(torchvision.models.get_model_weights(backbone).DEFAULT)
        assert t["extra"]["weights_file"].endswith(official_file(backbone))
        assert t["params_trainable"] == L.create_model(name, weights=None).num_features * 2 + 2
        assert t["epochs_run"] == 1
        assert f"weights: {name} uses" in err
    # InceptionV3's recipe resizes to 342 and crops 299: at 75 px it decodes 86 and crops 75.
    assert trials["transfer-inception_v3"]["extra"]["input_size"] == 75
    assert trials["transfer-inception_v3"]["extra"]["image_size"] == 86


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_model_of_every_shipped_config_builds_with_its_weights(use_hub, config):
    from lightlayers.trial import model_kwargs, resolve_study_weights

    cfg = load_config(CONFIGS / config)
    resolved, errors = resolve_study_weights(cfg, lambda _: None, progress=False)
    assert errors == {}
    for name in cfg.models:
        kwargs = model_kwargs(cfg, name)
        if name in resolved:
            kwargs["weights"] = resolved[name]
        model = L.create_model(name, **kwargs)
        assert model(torch.zeros(1, model.model_info.in_chans, 80, 80)).shape[0] == 1
        if name.startswith("transfer-"):
            assert model.weights_info()["weights_file"] is not None


def test_offline_failure_is_recorded_before_any_trial_trains(tiny_npz, tmp_path, monkeypatch,
                                                            capfd):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    out = tmp_path / "run"
    rc = cli(["run", "--data", str(tiny_npz), "--models", "transfer-inception_v3,paper-light-k1",
              "--epochs", "1", "--size", "75", "--out", str(out), "--no-report"])
    assert rc == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("weights: transfer-inception_v3"))
    assert "inception_v3_google-0cc3c7bd.pth" in line and "lightlayers weights fetch" in line
    assert err.index(line) < err.index("paper-light-k1 seed 0")
    trials = {t["model"]: t for t in ResultsStore(out / "results.db").trials()}
    failed, light = trials["transfer-inception_v3"], trials["paper-light-k1"]
    assert failed["status"] == "failed" and light["status"] == "done"
    assert "lightlayers weights fetch transfer-inception_v3" in failed["error"]
    assert str(tmp_path / "empty") in failed["error"]
    assert failed["finished_at"] <= light["started_at"]
    assert not (tmp_path / "empty" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
                ).exists()


def test_weights_flag_without_a_transfer_model_is_an_error(tiny_npz, tmp_path, capfd):
    assert cli(["run", "--data", str(tiny_npz), "--models", "paper-light-k1", "--weights",
                "DEFAULT", "--out", str(tmp_path / "r")]) == 2
    err = capfd.readouterr().err
    assert "no model of this study takes pretrained weights" in err
    cfg = tmp_path / "opts.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(tiny_npz), "models": ["study-light-k1"],
                                   "model_options": {"study-light-k1": {"weights": "w.pth"}}}))
    assert cli(["run", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    err = capfd.readouterr().err
    assert "model_options.study-light-k1: study-light-k1 does not take weights" in err
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "results.db").exists()


def test_mismatched_local_file_fails_its_trials_before_training(tiny_npz, tmp_path, capfd):
    state = random_state("resnet18", 0)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    out = tmp_path / "run"
    assert cli(["run", "--data", str(tiny_npz), "--models", "transfer-resnet18,paper-light-k1",
                "--weights", str(bad), "--epochs", "1", "--size", "32", "--out", str(out),
                "--no-report"]) == 1
    trials = {t["model"]: t for t in ResultsStore(out / "results.db").trials()}
    assert trials["transfer-resnet18"]["status"] == "failed"
    assert "mis-shaped keys (1): layer1.0.conv1.weight" in trials["transfer-resnet18"]["error"]
    assert trials["paper-light-k1"]["status"] == "done"


# --- downloads (from a local mirror: file:// URLs go through the same urllib code) ----------

class _FakeWeights:
    """Shaped like a torchvision weights entry (a URL and a name), for a file of our own
    making: the download code reads nothing else."""

    def __init__(self, name: str) -> None:
        self.url = f"https://example.invalid/models/{name}"

    def __str__(self) -> str:
        return "Fake_Weights.V1"


def _fake_weights(name: str) -> _FakeWeights:
    return _FakeWeights(name)


def test_download_checks_the_sha256_prefix_in_the_file_name(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    payload = b"weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    good, bad = f"net-{digest[:8]}.pth", "net-deadbeef.pth"
    (mirror / good).write_bytes(payload)
    (mirror / bad).write_bytes(payload)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LIGHTLAYERS_WEIGHTS_MIRROR", str(mirror))
    path = download_weights(_fake_weights(good), "net", progress=False)
    assert path.read_bytes() == payload and path == hub_file(good)
    with pytest.raises(WeightsError, match="does not match its checksum") as e:
        download_weights(_fake_weights(bad), "net", progress=False)
    assert bad in str(e.value)
    left = sorted(p.name for p in (tmp_path / "home" / "hub" / "checkpoints").iterdir())
    assert left == [good]  # nothing of the failed download is kept


def test_weights_fetch_and_list(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = official_file("resnet18")
    torch.save(random_state("resnet18", 3), mirror / name)  # not torchvision's bytes
    monkeypatch.setenv("LIGHTLAYERS_WEIGHTS_MIRROR", mirror.as_uri())
    assert cli(["weights", "fetch", "transfer-resnet18", "--quiet"]) == 2
    err = capfd.readouterr().err
    assert "does not match its checksum" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "hub" / "checkpoints" / name).exists()

    monkeypatch.setenv("LIGHTLAYERS_WEIGHTS_MIRROR", str(tmp_path / "nowhere"))
    assert cli(["weights", "fetch", "transfer-*", "--quiet"]) == 2
    err = capfd.readouterr().err
    assert len(re.findall(r"^lightlayers weights fetch: transfer-", err, re.M)) == len(BACKBONES)
    assert cli(["weights", "fetch", "study-light-k1"]) == 2
    assert "takes no pretrained weights" in capfd.readouterr().err

    ckpt = tmp_path / "home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(random_state("resnet18", 3), ckpt / name)
    assert cli(["weights", "list", "--verify"]) == 0
    out = capfd.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert set(rows) == set(TRANSFER)
    assert "CHECKSUM DIFFERS" in rows["transfer-resnet18"]
    assert "missing" in rows["transfer-inception_v3"]


def test_a_trial_given_resolved_weights_never_looks_for_files(use_hub, tiny_npz, tmp_path,
                                                             monkeypatch):
    """What a Ray worker runs: the driver's resolved weights, with no hub cache of its own."""
    from lightlayers.data import load_dataset
    from lightlayers.executors.ray import trial_task
    from lightlayers.fingerprint import data_key
    from lightlayers.spec import TrialSpec

    resolved = resolve_model_weights("transfer-resnet18", "DEFAULT", download=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "worker-has-nothing"))
    ds = load_dataset(str(tiny_npz), size=37)
    cfg = load_config(None, data=str(tiny_npz), models="transfer-resnet18", epochs=1, size=32,
                      device="cpu", executor="ray")
    out = trial_task(TrialSpec("transfer-resnet18", 0, "seed"), ds, data_key(ds),
                     cfg.to_dict(), None, resolved)
    assert "result" in out, out.get("failure")
    extra = out["result"].extra
    assert extra["weights_file"] == resolved.file and extra["weights_sha256"] == resolved.sha256
    assert not (tmp_path / "worker-has-nothing").exists()
    # Without them the trial fails with the fetch hint rather than downloading.
    failed = trial_task(TrialSpec("transfer-resnet18", 0, "seed"), ds, data_key(ds),
                        cfg.to_dict(), None, None)
    assert "lightlayers weights fetch transfer-resnet18" in failed["failure"]["error"]
