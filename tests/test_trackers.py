"""Experiment trackers (``--log mlflow,tensorboard``): a tiny real study on digits, its logs read
back with MLflow's own client and TensorBoard's own event reader and compared with the results
store; a resumed study logs only the trials it trains; a tracker that fails leaves the study
whole; a missing package or an unknown tracker is one line before anything trains."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightlayers.cli import main
from lightlayers.config import ConfigError, load_config
from lightlayers.runfolder.store import ResultsStore

mlflow = pytest.importorskip("mlflow", reason="install lightlayers[test]")
pytest.importorskip("tensorboard", reason="install lightlayers[test]")

ARGS = ["run", "--data", "digits", "--models", "paper-conv", "--epochs", "1", "--threads", "1",
        "--protocol", "seed", "--quiet"]
NO_REPORT = [*ARGS, "--no-report"]
LIGHTLAYERS = [sys.executable, "-m", "lightlayers.cli"]


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def stored(run: Path) -> dict[int, dict]:
    """The done trials by seed, each with its history."""
    with ResultsStore(run / "results.db", create=False) as store:
        return {t["seed"]: {**t, "history": store.history(t["id"])}
                for t in store.trials() if t["status"] == "done"}


def mlflow_runs(uri: str, experiment: str):
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(None)


def test_mlflow_and_tensorboard_hold_what_the_store_holds(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # A database URI keeps MLflow's default artifact root, ./mlruns of the working folder.
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "study"
    code, err = cli([*ARGS, "--seeds", "0", "--log", "mlflow,tensorboard", "--out", str(run)])
    assert code == 0, err
    assert "warning" not in err and "INFO" not in err, err
    trial = stored(run)[0]

    uri = f"sqlite:///{run / 'mlruns' / 'mlflow.db'}"
    runs = mlflow_runs(uri, "study")
    client = MlflowClient(tracking_uri=uri)
    # The study's report: one more run, holding the report folder's files.
    (report,) = runs[runs["tags.mlflow.runName"] == "report"]["run_id"]
    shown = {a.path for a in client.list_artifacts(report, "report")}
    assert {"report/report.html", "report/table.csv"} <= shown, shown
    assert not any(p.rsplit("/", 1)[-1].startswith(".") for p in shown)
    runs = runs[runs["tags.mlflow.runName"] != "report"]
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["metrics.accuracy"] == trial["accuracy"]
    assert row["metrics.auc"] == pytest.approx(trial["auc"])
    assert row["params.model"] == "paper-conv" and row["params.seed"] == "0"
    assert float(row["params.settings.lr"]) == trial["extra"]["protocol"]["lr"]
    assert row["tags.lightlayers.trial"] == trial["key"]
    val_acc = client.get_metric_history(row["run_id"], "val_acc")
    assert [(m.step, m.value) for m in val_acc] == [(h["epoch"], h["val_acc"])
                                                  for h in trial["history"]]
    names = {a.path for a in client.list_artifacts(row["run_id"])}
    assert names == {"checkpoint", "trial.json"}
    (ckpt,) = client.list_artifacts(row["run_id"], "checkpoint")
    assert ckpt.path == f"checkpoint/{Path(trial['checkpoint']).name}"
    assert ckpt.file_size == (run / trial["checkpoint"]).stat().st_size

    events = EventAccumulator(str(run / "tensorboard" / "paper-conv_seed0"))
    events.Reload()
    val_loss = events.Scalars("epoch/val_loss")
    assert [e.step for e in val_loss] == [h["epoch"] for h in trial["history"]]
    assert [e.value for e in val_loss] == pytest.approx([h["val_loss"] for h in trial["history"]])
    (acc,) = events.Scalars("test/accuracy")
    assert acc.value == pytest.approx(trial["accuracy"], abs=1e-6)  # stored as float32

    # The report written again goes to the same report run, not a new one.
    from lightlayers.trackers import log_report

    log_report(["mlflow"], {}, run, run / "report")
    again = mlflow_runs(uri, "study")
    assert list(again[again["tags.mlflow.runName"] == "report"]["run_id"]) == [report]

    # Resumed with one more seed, logging to a server's URI instead: only the new trial is
    # logged there, and the run folder's own store keeps its one run.
    elsewhere = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "shared")
    code, err = cli([*NO_REPORT, "--seeds", "0,1", "--log", "mlflow", "--out", str(run)])
    assert code == 0, err
    there = mlflow_runs(elsewhere, "shared")
    assert list(there["params.seed"]) == ["1"]
    assert there.iloc[0]["metrics.accuracy"] == stored(run)[1]["accuracy"]
    assert len(mlflow_runs(uri, "study")) == 2  # its trial and its report
    assert (tmp_path / "mlruns").is_dir()  # the shared experiment's artifacts
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["paper-conv_seed0"]


def test_a_failing_tracker_is_one_warning_and_the_study_goes_on(tmp_path):
    run = tmp_path / "study"

    def study(seeds: str, log: str, **env: str) -> list[str]:
        done = subprocess.run([*LIGHTLAYERS, *NO_REPORT, "--seeds", seeds, "--log", log,
                               "--out", str(run)], env={**os.environ, "COLUMNS": "80", **env},
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return [s for s in done.stderr.splitlines() if "warning" in s]

    (warned,) = study("0", "mlflow", MLFLOW_TRACKING_URI="nosuchscheme://nowhere")
    assert warned.startswith("lightlayers: warning: --log mlflow failed to start ("), warned
    assert f"the study goes on without mlflow, its results are in {run / 'results.db'}" in warned
    assert stored(run)[0]["accuracy"] is not None

    # A folder the tool did not write where a tracker would write: kept as it is.
    planted = run / "tensorboard" / "mine.txt"
    planted.parent.mkdir()
    planted.write_text("my notes\n")
    (warned,) = study("0,1", "tensorboard")
    assert warned.startswith("lightlayers: warning: --log tensorboard failed to start ("), warned
    assert "was not written by lightlayers; it is kept" in warned
    assert stored(run)[1]["accuracy"] is not None
    assert [p.name for p in planted.parent.iterdir()] == ["mine.txt"]
    assert planted.read_text() == "my notes\n"


def test_a_missing_package_is_one_line_before_anything_runs(tmp_path):
    run = tmp_path / "study"
    # A None in sys.modules is how Python marks a package as not importable.
    argv = [*NO_REPORT, "--seeds", "0", "--log", "mlflow", "--out", str(run)]
    code = ("import sys; sys.modules['mlflow'] = None; from lightlayers.cli import main; "
            f"sys.exit(main({argv!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    lines = [s for s in done.stderr.splitlines() if s.strip()]
    assert lines == ["lightlayers run: error: log: mlflow needs the mlflow package, which is "
                     "not installed; install it with: pip install 'lightlayers[mlflow]'"], lines
    assert not run.exists()


def test_log_setting_from_yaml_and_flags(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("data: digits\nlog: [mlflow, tensorboard]\n")
    assert load_config(cfg).log == ("mlflow", "tensorboard")
    cfg.write_text("data: digits\nlog: tensorboard\n")
    assert load_config(cfg).log == ("tensorboard",)
    cfg.write_text("data: digits\nlog: [wandb]\n")
    with pytest.raises(ConfigError, match=r"log: 'wandb' is not a tracker; one of mlflow, "
                                          r"tensorboard"):
        load_config(cfg)
    code, err = cli(["run", "--data", "digits", "--log", "mlfow", "--out",
                     str(tmp_path / "never")])
    assert code == 2 and "log: 'mlfow' is not a tracker" in err, err
    assert not (tmp_path / "never").exists()


def test_importing_lightlayers_imports_no_tracker_library():
    code = ("import sys, lightlayers, lightlayers.study, lightlayers.trackers; "
            "import lightlayers.config; lightlayers.config.load_config(data='digits', "
            "log=['mlflow', 'tensorboard']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mlflow', 'tensorboard') or m == 'torch.utils.tensorboard'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
