"""SIGTERM is Ctrl-C: every command stops with one line and exit 143, removes its temporary
files and folders, leaves no half-written file, and a stopped study resumes with every trial
done once. Scratch folders of processes killed outright are removed by the next one."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from data_fixtures import image_bytes
from hostile import LIGHTLAYERS, fresh_run

from lightlayers import scratch
from lightlayers.cli import EPILOG, EXIT_TERMINATED
from lightlayers.cli import main as cli
from lightlayers.signals import Terminated, held, sigterm_as_interrupt

MESSAGE = "interrupted (SIGTERM)"


# --- in process ----------------------------------------------------------------------------

def test_sigterm_raises_terminated_once_and_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
            pytest.fail("SIGTERM did not interrupt")
        finally:
            # A second SIGTERM while cleaning up does not cut the cleanup short.
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_held_defers_sigterm_to_the_end_of_the_block() -> None:
    steps = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            steps.append("inside")
        steps.append("after")  # not reached: raised when the block ended
    assert steps == ["inside"]


def test_cli_reports_sigterm_in_one_line_exit_143(monkeypatch, capsys) -> None:
    def terminated(args: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr("lightlayers.commands.models.main", terminated)
    assert cli(["models"]) == EXIT_TERMINATED == 143
    assert capsys.readouterr().err.strip() == MESSAGE
    assert any(line.split()[:1] == ["143"] and "SIGTERM" in line for line in EPILOG.splitlines())


# A process whose interpreter teardown aborts, as one interrupted inside a library's native
# setup can: the object below aborts when the teardown frees it. The real `models` command is
# stopped by SIGTERM while it runs.
_TEARDOWN_HAZARD = """
import atexit, os, signal, sys, time
from pathlib import Path
import lightlayers.commands.models as models
from lightlayers.cli import entry

class Hazard:
    def __del__(self):
        os.abort()

hazard = Hazard()
marker, how = Path(sys.argv[1]), sys.argv[2]
atexit.register(lambda: marker.write_text("exit handlers ran"))
real = models.main

def stopped(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    return real(args)

models.main = stopped
sys.argv[1:] = ["models"] if how == "stop" else ["models", "--help"]
entry()
"""


def test_an_interrupted_process_ends_with_its_code_not_in_teardown(tmp_path) -> None:
    marker = tmp_path / "atexit.txt"
    stopped = subprocess.run([sys.executable, "-c", _TEARDOWN_HAZARD, str(marker), "stop"],
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == EXIT_TERMINATED, (stopped.returncode, stopped.stderr[-2000:])
    assert stopped.stderr.strip().splitlines()[-1] == MESSAGE
    assert marker.read_text() == "exit handlers ran"
    # The hazard is real: a command that ends normally goes through the teardown, and aborts.
    marker.unlink()
    normal = subprocess.run([sys.executable, "-c", _TEARDOWN_HAZARD, str(marker), "help"],
                            capture_output=True, text=True, timeout=120)
    assert normal.returncode == -signal.SIGABRT, (normal.returncode, normal.stderr[-2000:])
    assert marker.read_text() == "exit handlers ran"


def test_scratch_folder_goes_on_error_interrupt_and_sigterm(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for exc in (RuntimeError("boom"), KeyboardInterrupt(), Terminated()):
        with pytest.raises(type(exc)), scratch.scratch_dir("test") as d:
            assert d.parent == tmp_path and d.name.startswith(f"lightlayers-test-{os.getpid()}-")
            (d / "f").write_text("x")
            raise exc
        assert list(tmp_path.iterdir()) == []
    # nest: a library's own temporary folder lands inside, and goes with it.
    with scratch.scratch_dir("test", nest=True) as d:
        inner = tempfile.mkdtemp()
        assert Path(inner).parent == d
    assert tempfile.gettempdir() == str(tmp_path) and list(tmp_path.iterdir()) == []



def test_an_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    import io
    import urllib.request

    from lightlayers.data import download

    class Stalls(io.BytesIO):
        def read(self, *a: object) -> bytes:
            if self.tell() > 0:
                raise Terminated()  # SIGTERM in the middle of the transfer
            return super().read(4)

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: Stalls(b"x" * 64))
    with pytest.raises(Terminated):
        download.fetch("https://example.invalid/d.npz", "0" * 32, tmp_path / "d.npz")
    assert list(tmp_path.iterdir()) == []

def _killed_owner(tmp: Path, kind: str) -> Path:
    """A scratch folder whose process was killed with SIGKILL (it could not remove it)."""
    code = ("import os, sys, tempfile, time; tempfile.tempdir = sys.argv[1]\n"
            "from lightlayers.scratch import scratch_dir\n"
            f"with scratch_dir({kind!r}) as d:\n"
            "    print(d, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    folder = Path(p.stdout.readline().strip())
    p.kill()
    p.wait()
    assert folder.is_dir() and folder.name.startswith(f"lightlayers-{kind}-{p.pid}-")
    return folder


def test_sweep_removes_only_dead_owners_folders(tmp_path) -> None:
    dead = _killed_owner(tmp_path, "trial")
    other_kind = _killed_owner(tmp_path, "int8")
    live = tmp_path / f"lightlayers-trial-{os.getppid()}-abc"  # the parent lives on
    old_style = tmp_path / "lightlayers-trial-abcdef"  # no pid in the name: not ours to judge
    for p in (live, old_style):
        p.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "lightlayers-trial-999999999-x"
    link.symlink_to(target)
    assert scratch.sweep("trial", tmp_path) == [dead]
    assert not dead.exists()
    for p in (other_kind, live, old_style, link, target / "keep"):
        assert p.exists() or p.is_symlink()


def test_a_ray_trial_removes_its_scratch_and_a_killed_workers(tmp_path, monkeypatch) -> None:
    """The Ray task body, run here: its scratch folder goes whether the trial returns or
    fails, and a folder left by a worker killed by force goes with the next trial."""
    import numpy as np

    from lightlayers.config import StudyConfig
    from lightlayers.executors.ray import trial_task
    from lightlayers.spec import TrialSpec
    from lightlayers.trial_result import TrialPredictions, TrialResult

    dead = _killed_owner(tmp_path, "trial")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def fake_trial(spec, ds, key, cfg, protocol, device, out, *a, **kw):
        seen.append(out)
        assert out.is_dir() and out.parent == tmp_path
        (out / "ck.safetensors").write_bytes(b"weights")
        if spec.seed == 1:
            raise RuntimeError("trial failed")
        return TrialResult({}, [], [], TrialPredictions([], np.zeros(0), np.zeros((0, 0))), {},
                           "ck.safetensors")

    cfg = StudyConfig(data="digits").to_dict()
    ok = trial_task(TrialSpec("paper-conv", 0, "seed"), object(), "k", cfg, fake_trial)
    assert ok["checkpoint_bytes"] == b"weights" and ok["result"].extra["node"]
    failed = trial_task(TrialSpec("paper-conv", 1, "seed"), object(), "k", cfg, fake_trial)
    assert "failure" in failed
    assert len(seen) == 2 and not any(p.exists() for p in seen)
    assert not dead.exists() and list(tmp_path.iterdir()) == []


# --- each command, stopped by SIGTERM ------------------------------------------------------

def _handler_installed(pid: int) -> bool:
    """SIGTERM is caught (Linux: the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def _image_folder(root: Path, n: int) -> Path:
    for i in range(n):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"im{i}.png").write_bytes(image_bytes(i, (24, 24)))
    return root


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


RUN_MODELS, RUN_SEEDS = ["paper-light-k1", "paper-conv"], [0, 1]


def _run_argv(out: Path) -> list[str]:
    return ["run", "--data", "digits", "--models", ",".join(RUN_MODELS), "--seeds",
            ",".join(map(str, RUN_SEEDS)), "--epochs", "4", "--quiet", "--no-report",
            "--out", str(out)]


def _trials(run: Path) -> list[tuple[str, int, str, float | None]]:
    if not (run / "results.db").exists():
        return []
    db = sqlite3.connect(f"file:{run / 'results.db'}?mode=ro", uri=True, timeout=10)
    try:
        return sorted(db.execute("SELECT model, seed, status, finished_at FROM trials"))
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def _statuses(run: Path) -> list[str]:
    return [t[2] for t in _trials(run)]


# When the study is signalled, round by round: while it starts (imports, data), while its
# first trial trains, and once a trial is recorded while the next one trains. The other
# commands get the signal that many seconds after their handler is in place.
RUN_MOMENTS = (
    lambda run, waited: waited >= 1.0,
    lambda run, waited: "running" in _statuses(run),
    lambda run, waited: "running" in _statuses(run) and "done" in _statuses(run),
)
DELAYS = (1.0, 3.0, 6.0)


@pytest.mark.slow
def test_sigterm_stops_every_command_cleanly(tmp_path, hostile_run) -> None:
    images = _image_folder(tmp_path / "images", 240)
    run = tmp_path / "study"
    done_before: dict[tuple[str, int], float | None] = {}
    interrupted_running = False
    for delay, run_moment in zip(DELAYS, RUN_MOMENTS, strict=True):
        base = tmp_path / f"round-{delay:g}"
        base.mkdir()
        src = fresh_run(hostile_run, base)
        out = base / "out"
        commands = {
            "run": (_run_argv(run), run),
            "export": (["export", str(src), "--int8", "--out", str(out / "m.onnx")], out),
            "report": (["report", str(src)], src),
            "predict": (["predict", f"{src}:paper-conv", str(images), "--out",
                         str(out / "preds.csv"), "--cam", str(out / "cams"), "--quiet"], out),
        }
        procs = {}
        for name, (argv, _) in commands.items():
            tmpdir = base / f"tmp-{name}"
            tmpdir.mkdir()
            env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "80"}
            env.pop("LIGHTLAYERS_DEBUG", None)
            procs[name] = (subprocess.Popen([*LIGHTLAYERS, *argv], env=env, cwd=base,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), tmpdir)
        ready: dict[str, float] = {}  # when each process's handler was seen in place
        signalled: dict[str, bool] = {}
        running_at_signal = False
        deadline = time.monotonic() + 120
        while len(signalled) < len(procs):
            assert time.monotonic() < deadline, ("never signalled", signalled)
            now = time.monotonic()
            for name, (p, _) in procs.items():
                if name in signalled:
                    continue
                if p.poll() is not None:
                    signalled[name] = False
                    continue
                if name not in ready:
                    if _handler_installed(p.pid):
                        ready[name] = now
                    continue
                waited = now - ready[name]
                due = run_moment(run, waited) if name == "run" else waited >= delay
                if due:
                    running_at_signal |= name == "run" and "running" in _statuses(run)
                    p.send_signal(signal.SIGTERM)
                    signalled[name] = True
            time.sleep(0.05)
        for name, (p, tmpdir) in procs.items():
            _, err = p.communicate(timeout=120)
            where = f"{name} in round {delay:g}"
            if signalled[name]:
                assert p.returncode == 143, (where, p.returncode, err[-2000:])
                # Progress lines of the steps begun ("report: drawing the figures ..."), then
                # the one line that says why it stopped.
                lines = [s for s in err.splitlines() if s.strip()]
                assert lines[-1:] == [MESSAGE], (where, err)
                assert all(re.fullmatch(r"report: .+ \.\.\.", s) for s in lines[:-1]), (where, err)
            else:
                assert p.returncode == 0, (where, err[-2000:])
            assert list(tmpdir.iterdir()) == [], (where, list(tmpdir.iterdir()))
            folder = commands[name][1]
            if folder.exists():
                assert _tmp_files(folder) == [], (where, _tmp_files(folder))
        assert signalled["run"], "the study ended before its signal"
        interrupted_running |= running_at_signal
        # What finished before stays finished with its first record; the trial that was
        # training is pending again, nothing is left marked running.
        for model, seed, status, finished in _trials(run):
            assert status in ("pending", "done"), (model, seed, status)
            if (model, seed) in done_before:
                assert (status, finished) == ("done", done_before[model, seed])
            elif status == "done":
                done_before[model, seed] = finished
    assert interrupted_running and done_before, "no round stopped a trial midway"

    # A rerun finishes the study, every trial done once: the ones recorded before the
    # signals keep their record, none is recorded twice.
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp-rerun")}
    (tmp_path / "tmp-rerun").mkdir()
    final = subprocess.run([*LIGHTLAYERS, *_run_argv(run)], env=env, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert final.returncode == 0, final.stderr[-2000:]
    trials = _trials(run)
    assert [(m, s) for m, s, _, _ in trials] == sorted(
        (m, s) for m in RUN_MODELS for s in RUN_SEEDS)
    assert all(status == "done" for _, _, status, _ in trials)
    for model, seed, _, finished in trials:
        if (model, seed) in done_before:
            assert finished == done_before[model, seed]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == len(trials), checkpoints
    assert list((tmp_path / "tmp-rerun").iterdir()) == [] and _tmp_files(run) == []


@pytest.mark.slow
def test_sigterm_stops_a_ray_study_and_its_workers_leave_no_scratch(tmp_path) -> None:
    """The driver stops Ray's workers by force (they cannot clean up); their scratch folders,
    named by their pids, are removed once they are gone."""
    pytest.importorskip("ray", reason="install lightlayers[ray]")
    run = tmp_path / "run"
    # Ray's sockets live in the temp folder, whose path must stay short (107 bytes for AF_UNIX).
    tmpdir = Path(tempfile.mkdtemp(prefix="ll-sig-", dir="/tmp"))
    try:
        _stop_a_ray_study(tmpdir, run)
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)


def _stop_a_ray_study(tmpdir: Path, run: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "80"}
    env.pop("LIGHTLAYERS_DEBUG", None)
    argv = ["run", "--data", "digits", "--models", "paper-light-k1", "--seeds", "0,1",
            "--epochs", "40", "--no-report", "--quiet", "--executor", "ray",
            "--cpus-per-trial", "1", "--out", str(run)]
    p = subprocess.Popen([*LIGHTLAYERS, *argv], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scratch_glob = "lightlayers-trial-*"
    deadline = time.monotonic() + 180
    # Signalled once a worker trains in its scratch folder.
    while not list(tmpdir.glob(scratch_glob)) and p.poll() is None:
        assert time.monotonic() < deadline, "no trial started on Ray"
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    # Ray may say something of its own as it starts; the command ends in the one line.
    assert err.strip().splitlines()[-1] == MESSAGE and "Traceback" not in err, err
    assert list(tmpdir.glob(scratch_glob)) == []
    assert {status for _, _, status, _ in _trials(run)} <= {"pending", "done"}
