"""The Ray executor on a local 2-CPU Ray instance: same numbers as the local executor, failures,
dead workers, Ctrl-C and resume; and the clear error when Ray is not installed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PNEUMONIA_NPZ
from procs import alive, cmdline, descendants

from lightlayers.cli import main as cli
from lightlayers.config import ConfigError, load_config
from lightlayers.runfolder.store import ResultsStore
from lightlayers.runtime import default_threads, resolve_threads
from lightlayers.study import run_study
from lightlayers.trial import run_trial

# Scores that must not depend on where a trial ran (timings do).
COMPARED = ("params_total", "params_trainable", "size_mb", "macs", "test_loss", "accuracy",
            "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "auc",
            "threshold", "best_epoch", "epochs_run")
MODELS = "study-light-k1,study-light-k2"
# Room for one default trial (all of this machine's torch threads) and for two 1-CPU trials.
RAY_CPUS = max(2, default_threads())


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> Path:
    """The first chest X-rays of each split (both classes in each): trials take seconds."""
    z = np.load(PNEUMONIA_NPZ)
    keep = {"train": 640, "val": 160, "test": 200}
    path = tmp_path_factory.mktemp("data") / "pneumonia_small.npz"
    np.savez(path, **{f"{s}_{kind}": z[f"{s}_{kind}"][:n] for s, n in keep.items()
                      for kind in ("images", "labels")})
    return path


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--size", "28", "--epochs", "1", "--quiet",
            "--no-report", "--protocol", "seed", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (start-up takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_study(small_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "study"
    # Defaults on both sides: one thread policy (runtime.resolve_threads) for both executors.
    assert cli(_args(small_npz, out, "--models", MODELS, "--seeds", "0,1")) == 0
    return out


@pytest.fixture(scope="module")
def ray_study(ray_instance, small_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "study"
    assert cli(_args(small_npz, out, "--models", MODELS, "--seeds", "0,1",
                     "--executor", "ray")) == 0
    return out


def _by_key(out: Path) -> dict[str, dict]:
    return {t["key"]: t for t in ResultsStore(out / "results.db", create=False).trials()}


@pytest.mark.slow
def test_ray_gives_the_local_numbers(local_study, ray_study):
    local, remote = _by_key(local_study), _by_key(ray_study)
    assert list(remote) == list(local) and len(remote) == 4  # same rows, in the same order
    store_l = ResultsStore(local_study / "results.db", create=False)
    store_r = ResultsStore(ray_study / "results.db", create=False)
    for key, a in local.items():
        b = remote[key]
        assert a["status"] == b["status"] == "done" and b["attempts"] == 1
        for col in COMPARED:
            assert b[col] == pytest.approx(a[col], abs=1e-4), (key, col)
        assert b["confusion"] == a["confusion"]
        assert b["extra"]["threads"] == a["extra"]["threads"] == default_threads()
        assert b["extra"]["retries"] == 0 and b["extra"]["node"]
        np.testing.assert_allclose(store_r.predictions(b["id"])["probs"],
                                   store_l.predictions(a["id"])["probs"], atol=1e-4)
        hist_a, hist_b = store_l.history(a["id"]), store_r.history(b["id"])
        assert [h["epoch"] for h in hist_b] == [h["epoch"] for h in hist_a]
        for ha, hb in zip(hist_a, hist_b, strict=True):
            assert hb["val_loss"] == pytest.approx(ha["val_loss"], abs=1e-4)
        # The worker's checkpoint, written by the driver: same path, same weights.
        assert b["checkpoint"] == a["checkpoint"]
        _assert_same_weights(local_study / a["checkpoint"], ray_study / b["checkpoint"])
    assert (ray_study / "results.csv").read_text().count(",done,") == 4


def _assert_same_weights(a: Path, b: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
        for k in fa.keys():  # noqa: SIM118  (safe_open is not a mapping)
            np.testing.assert_allclose(fb.get_tensor(k).numpy(), fa.get_tensor(k).numpy(),
                                       atol=1e-4)


@pytest.mark.slow
def test_rerun_skips_done_trials(ray_study, small_npz):
    before = {k: t["finished_at"] for k, t in _by_key(ray_study).items()}
    cfg = load_config(data=str(small_npz), size=28, epochs=1, models=MODELS, seeds=(0, 1),
                      out=str(ray_study), report=False, executor="ray")
    outcome = run_study(cfg, progress=False)
    assert outcome.ran == 0 and outcome.skipped == 4
    assert {k: t["finished_at"] for k, t in _by_key(ray_study).items()} == before


@pytest.mark.slow
def test_failing_trial_is_recorded_while_the_others_finish(ray_instance, small_npz, tmp_path):
    out = tmp_path / "fail"
    # A setting the model refuses when it is built, in the worker: the trial's own exception.
    cfg = tmp_path / "fail.yaml"
    cfg.write_text("model_options: {transfer-resnet18: {finetune: last-99}}\n")
    args = [*_args(small_npz, out, "--models", "transfer-resnet18,study-light-k1", "--seeds",
                   "0", "--executor", "ray", "--weights", "none"), str(cfg)]
    assert cli(args) == 1
    by_model = {t["model"]: t for t in _by_key(out).values()}
    failed = by_model["transfer-resnet18"]
    assert failed["status"] == "failed" and "last-1 .. last-6" in failed["error"]
    # A trial's own exception is not retried: it would fail the same way.
    assert failed["extra"]["retries"] == 0 and "Traceback" in failed["extra"]["traceback"]
    assert by_model["study-light-k1"]["status"] == "done"
    # The rerun tries the failed trial again and leaves the done one alone.
    done_at = by_model["study-light-k1"]["finished_at"]
    assert cli(args) == 1
    again = {t["model"]: t for t in _by_key(out).values()}
    assert again["transfer-resnet18"]["attempts"] == 2
    assert again["study-light-k1"]["finished_at"] == done_at


def _worker_dies(marker_dir: str, always: set[int]):
    """A trial function whose worker process dies: once per trial, or every time for seeds in
    ``always`` (a closure, so Ray ships it by value to workers that cannot import tests)."""

    def trial(spec, ds, key, cfg, protocol, device, out, reporter, weights=None):
        marker = Path(marker_dir) / f"{spec.model}-{spec.seed}"
        if spec.seed in always or not marker.exists():
            marker.touch()
            os._exit(1)  # as an OOM kill or a lost node: no exception, the process is gone
        return run_trial(spec, ds, key, cfg, protocol, device, out, reporter, weights=weights)

    return trial


def _use_executor(monkeypatch, **kw) -> None:
    """Make run_study build a RayExecutor with test-only options."""
    from dataclasses import replace

    from lightlayers.executors import EXECUTORS
    from lightlayers.executors.ray import RayExecutor

    # The registered entry with another factory: its settings (and so its flags) stay.
    monkeypatch.setitem(EXECUTORS, "ray", replace(
        EXECUTORS["ray"],
        factory=lambda cfg, protocol, device, out: RayExecutor(cfg, protocol, out, **kw)))


@pytest.mark.slow
def test_dead_worker_is_retried_then_the_trial_fails(ray_instance, small_npz, tmp_path,
                                                     monkeypatch):
    _use_executor(monkeypatch, trial_fn=_worker_dies(str(tmp_path), always={1}))
    out = tmp_path / "dies"
    assert cli(_args(small_npz, out, "--models", "study-light-k1", "--seeds", "0,1",
                     "--executor", "ray", "--max-retries", "1")) == 1
    by_seed = {t["seed"]: t for t in _by_key(out).values()}
    assert by_seed[0]["status"] == "done" and by_seed[0]["extra"]["retries"] == 1
    assert by_seed[0]["attempts"] == 1  # one run of the study; the retry is in extra
    assert (out / by_seed[0]["checkpoint"]).is_file()
    assert by_seed[1]["status"] == "failed" and by_seed[1]["extra"]["retries"] == 1
    assert "WorkerCrashedError" in by_seed[1]["error"] or "died" in by_seed[1]["error"]


@pytest.mark.slow
def test_ctrl_c_cancels_running_trials_and_a_rerun_resumes(ray_instance, small_npz, tmp_path,
                                                          monkeypatch):
    out = tmp_path / "interrupted"
    # Several 1-CPU trials at a time: when the first result arrives another one is still
    # running.
    args = _args(small_npz, out, "--models", "study-light-k1", "--seeds", "0,1,2",
                 "--executor", "ray", "--cpus-per-trial", "1")
    record_done = ResultsStore.record_done

    def then_ctrl_c(self, *a, **kw):
        record_done(self, *a, **kw)
        raise KeyboardInterrupt  # as Ctrl-C right after the first result arrived

    monkeypatch.setattr(ResultsStore, "record_done", then_ctrl_c)
    assert cli(args) == 130
    monkeypatch.undo()
    trials = _by_key(out)
    done = [t for t in trials.values() if t["status"] == "done"]
    assert len(done) == 1
    assert sorted(t["status"] for t in trials.values()) == ["done", "pending", "pending"]
    # The running trial was cancelled: its CPU comes back to Ray.
    deadline = time.time() + 30
    while ray_instance.available_resources().get("CPU", 0) < RAY_CPUS and time.time() < deadline:
        time.sleep(0.2)
    assert ray_instance.available_resources().get("CPU", 0) == RAY_CPUS

    assert cli(args) == 0
    after = _by_key(out)
    assert all(t["status"] == "done" for t in after.values())
    assert after[done[0]["key"]]["finished_at"] == done[0]["finished_at"]
    assert after[done[0]["key"]]["attempts"] == 1
    assert sorted(t["attempts"] for t in after.values()) == [1, 1, 2]  # the cancelled one: 2


@pytest.mark.slow
def test_data_from_shared_storage_gives_the_same_numbers(ray_instance, small_npz, local_study,
                                                         tmp_path, monkeypatch):
    _use_executor(monkeypatch, data_transfer="shared_path")
    out = tmp_path / "shared"
    assert cli(_args(small_npz, out, "--models", "study-light-k1", "--seeds", "1",
                     "--executor", "ray")) == 0
    (t,) = _by_key(out).values()
    ref = _by_key(local_study)[t["key"]]
    for col in COMPARED:
        assert t[col] == pytest.approx(ref[col], abs=1e-4), col


@pytest.mark.slow
def test_workers_use_the_drivers_weights(ray_instance, small_npz, tmp_path, monkeypatch):
    """The driver resolves the backbone's weights from its own hub cache; the workers, started
    with the session's empty one, never look for a file (they would fail) nor download."""
    import torch
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    planted.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), planted)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "study"
    assert cli(["run", "--data", str(small_npz), "--models", "transfer-resnet18", "--size", "32",
                "--epochs", "1", "--quiet", "--no-report", "--out", str(out),
                "--executor", "ray"]) == 0
    (t,) = ResultsStore(out / "results.db", create=False).trials()
    assert t["status"] == "done" and t["extra"]["weights_file"] == str(planted)
    assert t["extra"]["node"]  # it ran in a Ray worker


def test_node_with_other_data_is_refused(small_npz):
    from lightlayers.data import DataError
    from lightlayers.executors.ray import DataOnNode

    spec = DataOnNode(str(small_npz), 28, None, "stretch", 0.1, 0, "pneumonia_small@000000000000")
    with pytest.raises(DataError, match="every node must see the same files"):
        spec.load()


def test_trial_needing_more_than_the_local_instance_is_refused(ray_instance, tmp_path):
    from lightlayers.executors.ray import RayExecutor

    cfg = load_config(executor="ray", cpus_per_trial=RAY_CPUS + 1, out=str(tmp_path))
    ex = RayExecutor(cfg, cfg.resolved_protocol(), tmp_path)
    with pytest.raises(ConfigError, match="cpus-per-trial"):
        ex._slots(started_here=True)
    cfg = load_config(executor="ray", gpus_per_trial=0.25, out=str(tmp_path))
    with pytest.raises(ConfigError, match="0 GPU"):
        RayExecutor(cfg, cfg.resolved_protocol(), tmp_path)._slots(started_here=True)


@pytest.mark.parametrize(("given", "threads", "cpus"), [
    ({}, default_threads(), None),  # local and Ray: the same default
    ({"executor": "ray"}, default_threads(), default_threads()),
    ({"executor": "ray", "cpus_per_trial": 1}, 1, 1),  # no oversubscribed CPUs
    ({"executor": "ray", "threads": 3}, 3, 3),
    ({"executor": "ray", "threads": 1, "cpus_per_trial": 4}, 1, 4),
    ({"executor": "ray", "gpus_per_trial": 0.25}, 1, 1),  # GPU trials share a node
    ({"threads": 1}, 1, None),  # the local executor reserves no CPUs
])
def test_one_thread_policy_for_both_executors(given, threads, cpus):
    cfg = resolve_threads(load_config(**given))
    assert (cfg.threads, cfg.executor_options.get("cpus_per_trial")) == (threads, cpus)


def test_missing_ray_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "noray"
    assert cli(_args(PNEUMONIA_NPZ, out, "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert "pip install 'lightlayers[ray]'" in err and "--executor local" in err
    assert not (out / "results.db").exists()  # refused before any data or store


@pytest.mark.parametrize(("overrides", "named"), [
    ({"executor": "ray", "gpus_per_trial": 1.5}, "gpus_per_trial"),
    ({"executor": "ray", "gpus_per_trial": -0.5}, "gpus_per_trial"),
    ({"executor": "ray", "cpus_per_trial": 0}, "cpus_per_trial"),
    ({"executor": "ray", "max_retries": -1}, "max_retries"),
    ({"executor": "ray", "device": "cuda"}, "gpus_per_trial > 0"),
    ({"executor": "ray", "device": "cpu", "gpus_per_trial": 0.5}, "device cpu"),
    ({"ray_address": "auto"}, "executor ray"),
    ({"executor": "dask"}, "executor"),
])
def test_bad_executor_settings_are_named(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config(**overrides)


def test_executor_settings_do_not_block_a_resume():
    from lightlayers.config import comparable_settings as _settings

    local = load_config(models="study-light-k1")
    remote = load_config(models="study-light-k1", executor="ray", cpus_per_trial=2,
                         gpus_per_trial=0.5, ray_address="auto")
    assert _settings(local) == _settings(remote)
    assert load_config(executor="ray", gpus_per_trial=2).executor_settings().gpus_per_trial == 2.0



@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_local_ray_processes_die_with_the_driver(small_npz, tmp_path):
    """`kill -9` of `lightlayers run --executor ray` leaves no worker of its local Ray instance
    behind (the raylet, the GCS server, the workers)."""
    import signal
    import subprocess

    pytest.importorskip("ray")
    args = _args(small_npz, tmp_path / "study", "--models", "study-light-k1", "--executor", "ray")
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, "-m", "lightlayers.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        family: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            family = descendants(proc.pid)
            if any("default_worker" in cmdline(p) or "ray::" in cmdline(p) for p in family) \
                    and any("raylet" in cmdline(p) for p in family):
                break
            time.sleep(0.2)
        assert any("raylet" in cmdline(p) for p in family), "no local Ray instance appeared"
        time.sleep(1)
        family = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # The raylet, the GCS server and the workers (what holds memory) must go at once. Ray's
        # dashboard and runtime-env agents, small and idle, leave on their next health check of
        # the raylet (about a minute on a loaded machine): not waited for here.
        family = [p for p in family if "agent" not in cmdline(p).lower()]
        deadline = time.monotonic() + 30
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in family if alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
    names = [cmdline(p)[:80] for p in left]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"Ray processes outlived their driver: {names}"
