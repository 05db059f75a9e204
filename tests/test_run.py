"""`lightlayers run` end to end on real data: records, resume, crash safety, failures."""

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from data_fixtures import pneumonia_subset

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.config import load_config
from lightlayers.metrics import classification_metrics
from lightlayers.runfolder import csv_columns
from lightlayers.runfolder.store import ResultsStore
from lightlayers.study import run_study

# The real chest X-rays, the first few hundred of each official split: seconds, not minutes.
SUBSET = {"train": 400, "val": 100, "test": 200}
# Options that fail before any data is read use scikit-learn's digits.
DIGITS = ["run", "--data", "digits", "--size", "32", "--quiet", "--no-report"]
ISSUE_COLUMNS = ("model,seed,status,params_total,params_trainable,size_mb,macs,accuracy,"
                 "balanced_accuracy,sensitivity,specificity,f1,auc,collapsed,total_time_s,"
                 "epoch_time_s,first_epoch_s,infer_img_s,latency_ms").split(",")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return pneumonia_subset(tmp_path_factory.mktemp("data") / "pneumoniamnist_28_subset.npz",
                            **SUBSET)


@pytest.fixture(scope="module")
def base(small_npz):
    # The published protocol, as the library's default (load_config) below compares with it.
    return ["run", "--data", str(small_npz), "--size", "28", "--quiet", "--no-report",
            "--protocol", "seed"]


@pytest.fixture(scope="module")
def study(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "check"
    rc = cli([*base, "--models", "study-light-k2,study-conv", "--seeds", "0,1", "--epochs", "2",
              "--out", str(out)])
    assert rc == 0
    return out


def test_run_records_every_trial(study):
    store = ResultsStore(study / "results.db", create=False)
    trials = store.trials()
    assert [(t["model"], t["seed"], t["status"]) for t in trials] == [
        ("study-light-k2", 0, "done"), ("study-light-k2", 1, "done"),
        ("study-conv", 0, "done"), ("study-conv", 1, "done")]
    for t in trials:
        model = L.create_model(t["model"])
        c = L.count_params(model)
        assert (t["params_total"], t["params_trainable"]) == (c.total, c.trainable)
        ckpt = study / t["checkpoint"]
        assert t["size_mb"] == pytest.approx(ckpt.stat().st_size / 1e6)
        assert t["macs"] > 0 and t["infer_img_s"] > 0 and t["latency_ms"] > 0
        assert t["total_time_s"] >= t["first_epoch_s"] > 0 and t["epoch_time_s"] > 0
        history = store.history(t["id"])
        assert [h["epoch"] for h in history] == [1, 2]
        assert all(h["val_loss"] is not None and h["time_s"] > 0 for h in history)
        # The best checkpoint is the lowest validation loss of the history.
        best = min(history, key=lambda h: h["val_loss"])["epoch"]
        assert t["best_epoch"] == best
        assert t["extra"]["amp"] is None  # no reduced precision on the CPU
    rows = (study / "results.csv").read_text().splitlines()
    assert rows[0].split(",") == csv_columns()
    assert set(ISSUE_COLUMNS) <= set(csv_columns())
    assert len(rows) == 5 and all(",done," in r for r in rows[1:])
    assert (study / "config.yaml").is_file()
    meta = store.meta()
    assert meta["data"]["split_sizes"] == SUBSET  # the file's own splits, as given
    assert meta["environment"]["torch"]


def test_metrics_recompute_from_stored_predictions(study):
    from sklearn.metrics import accuracy_score, roc_auc_score

    store = ResultsStore(study / "results.db", create=False)
    for t in store.trials(status="done"):
        p = store.predictions(t["id"])
        assert p["classes"] == ["normal", "pneumonia"]
        assert p["probs"].shape == (SUBSET["test"], 2)
        np.testing.assert_allclose(p["probs"].sum(1), 1.0, atol=1e-6)
        preds = (p["probs"][:, 1] >= 0.5).astype(int)
        assert t["accuracy"] == pytest.approx(accuracy_score(p["labels"], preds))
        assert t["auc"] == pytest.approx(roc_auc_score(p["labels"], p["probs"][:, 1]), abs=1e-6)
        m = classification_metrics(p["labels"], p["probs"], 1, t["threshold"])
        assert t["confusion"] == m["confusion"]
        assert t["collapsed"] == (len(set(preds)) == 1)


def test_second_run_trains_nothing(study, small_npz):
    before = {t["key"]: t["finished_at"] for t in ResultsStore(study / "results.db").trials()}
    outcome = run_study(load_config(data=str(small_npz), size=28, epochs=2,
                                    models="study-light-k2,study-conv", seeds=(0, 1),
                                    out=str(study), report=False), progress=False)
    assert outcome.ran == 0 and outcome.skipped == 4
    after = {t["key"]: t["finished_at"] for t in ResultsStore(study / "results.db").trials()}
    assert after == before


def test_changed_settings_in_same_folder_are_refused(study, base, capsys):
    rc = cli([*base, "--models", "study-light-k2", "--seeds", "0", "--epochs", "3",
              "--out", str(study)])
    assert rc == 2
    assert "epochs" in capsys.readouterr().err


def test_same_command_gives_same_metrics(base, tmp_path):
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli([*base, "--models", "study-light-k1", "--seeds", "3", "--epochs", "2",
                    "--out", str(out)]) == 0
        store = ResultsStore(out / "results.db")
        (t,) = store.trials()
        results.append((t, store.predictions(t["id"])["probs"]))
    (a, pa), (b, pb) = results
    for k in ("accuracy", "auc", "test_loss", "sensitivity", "specificity", "best_epoch"):
        assert a[k] == b[k], k
    np.testing.assert_array_equal(pa, pb)


def test_failed_trial_is_recorded_and_the_study_goes_on(base, tmp_path):
    out = tmp_path / "fail"
    # No pretrained weights in the (empty) torch hub and no network: that trial must fail.
    rc = cli([*base, "--models", "transfer-resnet18,study-light-k1", "--seeds", "0",
              "--epochs", "1", "--out", str(out)])
    assert rc == 1
    by_model = {t["model"]: t for t in ResultsStore(out / "results.db").trials()}
    failed = by_model["transfer-resnet18"]
    assert failed["status"] == "failed"
    assert "resnet18-f37072fd.pth" in failed["error"] and "--weights" in failed["error"]
    assert by_model["study-light-k1"]["status"] == "done"
    csv_rows = (out / "results.csv").read_text()
    assert "transfer-resnet18,0,seed,failed" in csv_rows


def _count(db, status):
    try:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM trials WHERE status=?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # the run has created the file but not its tables yet
        return 0


def test_kill_9_mid_study_then_resume(base, tmp_path):
    out = tmp_path / "crash"
    db = out / "results.db"
    args = [*base, "--models", "study-light-k1,study-light-k2", "--seeds", "0", "--epochs",
            "12", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "lightlayers.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)
    deadline = time.time() + 480  # generous: CI machines may be loaded
    try:
        while time.time() < deadline:
            if db.exists() and _count(db, "done") == 1 and _count(db, "running") == 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()}")
            time.sleep(0.02)
        else:
            pytest.fail("the first trial did not finish in time")
        # Inside the second trial (recorded as running, its 12 epochs ahead): whether it
        # really was is checked below, from the store.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first = ResultsStore(db).trials(status="done")
    assert len(first) == 1 and _count(db, "running") == 1
    assert cli(args) == 0
    trials = ResultsStore(db).trials()
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials)
    kept = next(t for t in trials if t["key"] == first[0]["key"])
    assert kept["finished_at"] == first[0]["finished_at"] and kept["attempts"] == 1
    redone = next(t for t in trials if t["key"] != first[0]["key"])
    assert redone["attempts"] == 2
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3


def test_bad_config_field_names_it(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [study-light-k1]\nepoch: 3\n")
    assert cli(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "epoch" in err and "unknown key" in err and str(cfg) in err
    cfg.write_text("models: [study-light-k1]\nlr: fast\n")
    assert cli(["run", str(cfg), "--quiet"]) == 2
    assert "lr" in capsys.readouterr().err
    assert cli(["run", "--models", "study-lite-k1", "--quiet"]) == 2
    assert "study-light-k1" in capsys.readouterr().err


def test_non_finite_loss_fails_the_trial_and_the_study_goes_on(base, tmp_path):
    out = tmp_path / "nan"
    # An absurd learning rate: Adam's first steps make the weights, then the loss, non-finite.
    rc = cli([*base, "--models", "study-light-k1,study-light-k2", "--seeds", "0",
              "--epochs", "2", "--lr", "1e38", "--out", str(out)])
    assert rc == 1
    trials = ResultsStore(out / "results.db").trials()
    assert [t["model"] for t in trials] == ["study-light-k1", "study-light-k2"]
    for t in trials:  # the first failure did not stop the study: the second trial ran too
        assert t["status"] == "failed" and t["accuracy"] is None
        assert "non-finite training loss" in t["error"] and "epoch 1" in t["error"]
    assert (out / "results.csv").read_text().count(",failed,") == 2


def test_set_flag_overrides_one_protocol_setting(base, tmp_path):
    import yaml

    out = tmp_path / "set"
    assert cli([*base, "--models", "study-light-k1", "--seeds", "0", "--epochs", "1",
                "--protocol", "improved", "--set", "class_weighting=false",
                "--set", "augment.rotate_deg=0", "--set", "bn_momentum=null",
                "--out", str(out)]) == 0
    proto = yaml.safe_load((out / "config.yaml").read_text())["resolved_protocol"]
    assert proto["class_weighting"] is False and proto["bn_momentum"] is None
    assert proto["augment"]["rotate_deg"] == 0
    assert proto["augment"]["translate"] == 0.06  # the rest of the recipe is kept
    assert proto["label_smoothing"] == 0.1 and proto["schedule"] == "cosine"


def test_models_flag_may_pick_a_subset_of_a_config_with_per_model_sizes(tmp_path):
    from pathlib import Path

    from lightlayers.config import ConfigError

    path = Path(__file__).resolve().parents[1] / "configs" / "cpu-study.yaml"
    cfg = load_config(path, models="study-light-k1")
    assert cfg.models == ("study-light-k1",) and cfg.sizes == {"transfer-inception_v3": 75}
    bad = tmp_path / "typo.yaml"
    bad.write_text("models: [study-light-k1]\nsizes: {transfer-inceptoin_v3: 75}\n")
    with pytest.raises(ConfigError, match=r"sizes: .*transfer-inceptoin_v3"):
        load_config(bad)


def test_set_flag_merges_with_the_file(tmp_path):
    from lightlayers.config import parse_overrides

    cfg = tmp_path / "c.yaml"
    cfg.write_text("protocol: improved\nprotocol_overrides: {dropout: 0.2, "
                   "augment: {contrast: 0.0}}\n")
    flags = parse_overrides(["augment.rotate_deg=3", "label_smoothing=0",
                             "augment.scale=0.2", "augment.rotate_deg=4"])  # the last one wins
    assert flags == {"augment": {"rotate_deg": 4, "scale": 0.2}, "label_smoothing": 0}
    proto = load_config(cfg, protocol_overrides=flags).resolved_protocol()
    assert (proto.dropout, proto.label_smoothing) == (0.2, 0.0)
    assert (proto.augment.contrast, proto.augment.rotate_deg, proto.augment.scale) == (0.0, 4, 0.2)


@pytest.mark.parametrize(("flag", "message"), [
    ("class_weighting", "expected KEY=VALUE"),
    ("colour=1", "unknown key(s) colour"),
    ("schedule.warm=1", "only augment.KEY may be dotted"),
    ("augment.spin=1", "spin"),
    ("lr=[1", "not valid YAML"),
    ("name=seed", "--protocol seed|improved"),
])
def test_bad_set_flag_is_named(flag, message, capsys):
    assert cli([*DIGITS, "--models", "study-light-k1", "--set", flag]) == 2
    assert message in capsys.readouterr().err


def test_protocol_sets_dropout_and_batchnorm_momentum():
    from lightlayers.config import IMPROVED, Protocol
    from lightlayers.models import create_model
    from lightlayers.trial import apply_protocol

    model = create_model("study-light-k2", num_classes=2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 for m in bns)  # Keras' 0.99 in PyTorch's convention
    apply_protocol(model, Protocol())
    assert all(m.momentum == 0.01 for m in bns) and model.head_dropout.p == 0.0
    apply_protocol(model, dataclasses.replace(IMPROVED, dropout=0.3))
    assert all(m.momentum == 0.1 for m in bns) and model.head_dropout.p == 0.3


@pytest.mark.parametrize("name", ["study", "cpu-study", "paper-mnist", "paper-cifar10",
                                  "cpu-demo", "results-seed", "results-improved"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(path)  # checks every setting, model name and the resolved protocol
    json.dumps(cfg.to_dict())  # as the results store records it


def test_second_process_on_same_folder_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "locked"
    out.mkdir()
    # The folder as the first process made it: its manifest, then the held lock.
    (out / ".lightlayers.json").write_text('{"kind": "run", "files": [".lock"]}')
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = cli([*DIGITS, "--models", "study-light-k1", "--epochs", "1", "--out", str(out)])
    assert rc == 2
    assert "another `lightlayers run` is using" in capsys.readouterr().err
    assert not (out / "results.db").exists()


def test_a_rerun_with_other_settings_names_both_values(tmp_path, capsys):
    base = ["run", "--data", "digits", "--models", "paper-light-k1", "--epochs", "1", "--size",
            "8", "--quiet", "--no-report", "--out", str(tmp_path / "r")]
    assert cli([*base, "--protocol", "seed"]) == 0
    capsys.readouterr()
    # The default protocol is improved: the folder's seed study is not resumed by it.
    assert cli(base) == 2
    err = capsys.readouterr().err
    assert "other settings (protocol: 'seed' there, 'improved' now)" in err
    assert len(err.strip().splitlines()) == 1
