"""`lightlayers models`: counts without building any model's weights, equal to real builds; the
stored table equal to the registry's; the table and its --json twin."""

import json
import subprocess
import sys

import pytest
import torch

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.commands.models import TABLE_FILE, table_rows, table_source
from lightlayers.models import model_info, model_params

NAMES = L.list_models()


def _real_build(name, num_classes=None):
    kw = {"weights": None} if name.startswith("transfer-") else {}
    return L.create_model(name, num_classes=num_classes, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_meta_device_counts_equal_a_real_build(name):
    """A non-default class count, so that the head's share is checked too."""
    assert model_params(name, num_classes=3) == L.count_params(_real_build(name, num_classes=3))


def test_default_counts_equal_the_default_build():
    for name in ("study-light-k3", "paper-cifar-conv", "transfer-resnet18"):
        assert model_params(name) == L.count_params(_real_build(name)), name


def test_stored_table_is_the_registrys():
    """`lightlayers models` prints a stored table; a model added or changed without
    rewriting it fails here."""
    assert TABLE_FILE.read_text() == table_source(table_rows()), (
        f"{TABLE_FILE.name} is out of date: run `python -m lightlayers.commands.models`")


def test_table_lists_every_model_in_order(capsys):
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "total", "trainable", "description"]
    assert [line.split()[0] for line in lines[1:]] == NAMES
    # The published counts (test_models.py).
    row = next(line for line in lines if line.startswith("study-light-k3 "))
    assert row.split()[1:3] == ["6,447", "6,111"]
    row = next(line for line in lines if line.startswith("transfer-inception_v3 "))
    assert row.split()[1:3] == ["21,824,098", "4,098"]
    assert cli(["models", "study-light-*"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (f"study-light-k{k}", f"{1847 * k + 906:,}", f"{1847 * k + 570:,}") for k in range(1, 6)]


@pytest.mark.parametrize("classes", [None, "5"])
def test_json_matches_the_table_and_the_registry(classes, capsys):
    extra = [] if classes is None else ["--num-classes", classes]
    assert cli(["models", "--json", *extra]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == NAMES
    assert cli(["models", *extra]) == 0
    table = capsys.readouterr().out.splitlines()[1:]
    for r, line in zip(rows, table, strict=True):
        assert line.split()[1:3] == [f"{r['params_total']:,}", f"{r['params_trainable']:,}"]
        info = model_info(r["name"])
        assert line.endswith("  " + info.description) and r["description"] == info.description
        assert (r["family"], r["in_chans"], r["input_size"], r["k"], r["reference"]) == (
            info.family, info.in_chans, info.input_size, info.k, info.reference)
        assert r["num_classes"] == (info.num_classes if classes is None else 5)
        assert r["takes_weights"] == r["name"].startswith("transfer-")
        assert ("weights" in r["options"]) == r["takes_weights"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["study-light-k2"]["k"] == 2 and by_name["study-conv"]["k"] is None
    inception = by_name["transfer-inception_v3"]
    assert inception["input_size"] == 299 and inception["min_input_size"] == 75
    assert inception["preprocess"]["crop_size"] == 299
    paper = by_name["paper-light-k1"]
    assert paper["in_chans"] == 1 and paper["preprocess"] is None


def test_bad_class_count_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["models", "--num-classes", "0"])
    assert e.value.code == 2
    assert "--num-classes: must be an integer >= 1" in capsys.readouterr().err


def test_counting_initialises_no_weight(monkeypatch, capsys):
    """--num-classes counts from the registry, on the meta device: no weight is drawn."""
    drawn = []
    for method in ("uniform_", "normal_"):
        real = getattr(torch.Tensor, method)

        def spy(self, *a, _real=real, **kw):
            if not self.is_meta:
                drawn.append(tuple(self.shape))
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, method, spy)
    L.create_model("study-light-k1")  # the spies see a real build's weights
    assert drawn
    drawn.clear()
    assert cli(["models", "--num-classes", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(NAMES) + 1
    assert drawn == []


def test_the_table_does_not_import_torch():
    """What makes `lightlayers models` (and `lightlayers --help`) quick."""
    code = ("import sys\n"
            "from lightlayers.cli import main\n"
            "rc = main(['models'])\n"
            "print('TORCH', 'torch' in sys.modules)\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(NAMES) + 2 and lines[-1] == "TORCH False"
