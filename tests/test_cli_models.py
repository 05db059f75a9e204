"""`lightlayers models`: counts without building any model's weights, equal to real builds; the
table and its --json twin."""

import json
import subprocess
import sys

import pytest

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.models import model_description, model_info, model_params
from lightlayers.models.transfer import BACKBONE_SHAPES, BACKBONES

NAMES = L.list_models()


def _real_build(name, num_classes=None):
    kw = {"weights": None} if name.startswith("transfer-") else {}
    return L.create_model(name, num_classes=num_classes, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_listed_counts_equal_a_real_build(name):
    """A non-default class count so that the head's share is checked too; the default is the
    published table, checked in test_models.py and below."""
    model = _real_build(name, num_classes=3)
    assert model_params(name, num_classes=3) == L.count_params(model)
    assert model_description(name) == model.model_info.description


def test_default_counts_equal_the_default_build():
    for name in ("study-light-k3", "paper-cifar-conv", "transfer-resnet18"):
        assert model_params(name) == L.count_params(_real_build(name)), name


def test_every_backbone_has_its_shape():
    assert set(BACKBONE_SHAPES) == set(BACKBONES)


def test_counts_refuse_a_bad_class_count():
    for name in ("study-light-k1", "transfer-resnet18"):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
            model_params(name, num_classes=0)


def test_table_lists_every_model_in_order(capsys):
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "total", "trainable", "description"]
    assert [line.split()[0] for line in lines[1:]] == NAMES
    row = next(line for line in lines if line.startswith("study-light-k3 "))
    assert row.split()[1:3] == ["6,447", "6,111"]
    row = next(line for line in lines if line.startswith("transfer-inception_v3 "))
    assert row.split()[1:3] == ["21,824,098", "4,098"]


def test_json_matches_the_table_and_the_registry(capsys):
    assert cli(["models", "--json", "--num-classes", "5"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == NAMES
    assert cli(["models", "--num-classes", "5"]) == 0
    table = capsys.readouterr().out.splitlines()[1:]
    for r, line in zip(rows, table, strict=True):
        assert line.split()[1:3] == [f"{r['params_total']:,}", f"{r['params_trainable']:,}"]
        assert line.endswith("  " + r["description"])
        info = model_info(r["name"])
        assert (r["family"], r["in_chans"], r["input_size"], r["k"], r["reference"]) == (
            info.family, info.in_chans, info.input_size, info.k, info.reference)
        assert r["num_classes"] == 5
        assert r["takes_weights"] == r["name"].startswith("transfer-")
        assert ("weights" in r["options"]) == r["takes_weights"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["study-light-k2"]["k"] == 2 and by_name["study-conv"]["k"] is None
    inception = by_name["transfer-inception_v3"]
    assert inception["input_size"] == 299 and inception["min_input_size"] == 75
    assert inception["preprocess"]["crop_size"] == 299
    paper = by_name["paper-light-k1"]
    assert paper["in_chans"] == 1 and paper["preprocess"] is None


def test_json_pattern_filters(capsys):
    assert cli(["models", "--json", "study-light-*"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"study-light-k{k}" for k in range(1, 6)]
    # The published counts (test_models.py): 1847 per unit of k.
    assert [(r["params_total"], r["params_trainable"]) for r in rows] == [
        (1847 * k + 906, 1847 * k + 570) for k in range(1, 6)]


def test_bad_class_count_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["models", "--num-classes", "0"])
    assert e.value.code == 2
    assert "--num-classes: must be an integer >= 1" in capsys.readouterr().err


def test_table_needs_neither_torchvision_nor_weights():
    """What keeps `lightlayers models` quick: it never imports torchvision (which brings in
    torch._dynamo) and never initialises a model's weights."""
    code = ("import sys\n"
            "import torch\n"
            "inits = []\n"
            "real = torch.Tensor.uniform_\n"
            "def spy(self, *a, **kw):\n"
            "    if not self.is_meta:\n"
            "        inits.append(tuple(self.shape))\n"
            "    return real(self, *a, **kw)\n"
            "torch.Tensor.uniform_ = spy\n"
            "from lightlayers.cli import main\n"
            "rc = main(['models'])\n"
            "print('TORCHVISION', 'torchvision' in sys.modules, 'INITS', len(inits))\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "TORCHVISION False INITS 0"
