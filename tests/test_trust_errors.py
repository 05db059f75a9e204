"""Trust: one error policy for the command (one line, documented exit codes, the traceback only
with --debug), a damaged results store named, and a diagnosis for collapsed trials."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PNEUMONIA_NPZ

from lightlayers.cli import explain
from lightlayers.cli import main as cli
from lightlayers.config import Protocol
from lightlayers.metrics import DIAGNOSIS, diagnose
from lightlayers.runfolder.store import ResultsStore, StoreError, sqlite_error

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["run", "--data", "digits", "--models", "paper-conv", "--epochs", "1", "--quiet",
          "--no-report"]
LIGHTLAYERS = [sys.executable, "-m", "lightlayers.cli"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- the policy ----------------------------------------------------------------------------
def test_help_documents_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "--debug" in out and "LIGHTLAYERS_DEBUG=1" in out
    for code, words in (("0", "done"), ("1", "some trial failed"), ("2", "bad input"),
                        ("3", "internal error"), ("130", "interrupted")):
        assert any(line.split()[:1] == [code] and words in line for line in out.splitlines())


def test_usage_errors_exit_2(capsys) -> None:
    for argv in (["nosuch"], ["run", "--epochs", "x"]):
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def _boom(args: object) -> int:
    raise RuntimeError("boom\nsecond line")


def test_internal_error_is_one_line_exit_3(monkeypatch, capsys) -> None:
    monkeypatch.setattr("lightlayers.commands.models.main", _boom)
    monkeypatch.delenv("LIGHTLAYERS_DEBUG", raising=False)
    assert cli(["models"]) == 3
    assert _one_line(capsys.readouterr().err) == (
        "lightlayers models: internal error: RuntimeError: boom; rerun with --debug for the "
        "traceback and report it")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, monkeypatch, capsys) -> None:
    monkeypatch.setattr("lightlayers.commands.models.main", _boom)
    if how == "env":
        monkeypatch.setenv("LIGHTLAYERS_DEBUG", "1")
        argv = ["models"]
    else:
        argv = ["--debug", "models"]
    assert cli(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in _boom" in err
    assert err.strip().splitlines()[-1].startswith("lightlayers models: internal error:")


def test_interrupt_exits_130(monkeypatch, capsys) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("lightlayers.commands.models.main", interrupted)
    assert cli(["models"]) == 130
    assert _one_line(capsys.readouterr().err) == "interrupted"


@pytest.mark.parametrize(("code", "path", "command", "expected"), [
    (errno.EROFS, "/mnt/ro/run/results.csv", "run",
     "cannot write /mnt/ro/run/results.csv: read-only file system; choose another --out"),
    (errno.EACCES, "/srv/run/.lock", "run",
     "cannot write /srv/run/.lock: permission denied; choose another --out"),
    (errno.ENOSPC, "/srv/run/results.db", "run",
     "disk full while writing /srv/run/results.db; free some space or choose another --out"),
    (errno.ENOSPC, None, "run", "disk full while writing a file; free some space or choose "
                                "another --out"),
    (errno.EROFS, "/srv/run/report/table.csv", "report",
     "cannot write /srv/run/report/table.csv: read-only file system; pass --out with a "
     "writable folder"),
])
def test_os_errors_become_one_line_with_the_fix(code, path, command, expected) -> None:
    assert explain(OSError(code, os.strerror(code), path), command) == (2, f"error: {expected}")


def test_unwritable_cache_names_the_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "c"))
    e = OSError(errno.EACCES, "Permission denied", str(tmp_path / "c" / "features" / "x"))
    code, message = explain(e, "run")
    assert code == 2 and message.endswith("point LIGHTLAYERS_CACHE at a writable folder with room")


def test_disk_full_mid_study_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"

    def full(store: object, folder: object) -> None:
        path = folder.path / "results.csv"  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("lightlayers.study.write_results_csv", full)
    assert cli([*DIGITS, "--out", str(out)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"lightlayers run: error: disk full while writing {out.resolve()}/results.csv; free some "
        "space or choose another --out")


def test_lightlayers_warnings_are_one_line(tmp_path) -> None:
    env = {**os.environ, "LIGHTLAYERS_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([*LIGHTLAYERS, "data", "summary", str(PNEUMONIA_NPZ), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert ("lightlayers: warning: pneumoniamnist_28_reconstructed: identical images in more "
            "than one split (train/val: 8)\n") in p.stderr
    assert "warnings.warn" not in p.stderr and ".py:" not in p.stderr


# --- bad input -----------------------------------------------------------------------------
def test_out_naming_a_file_is_one_line(tmp_path, capsys) -> None:
    f = tmp_path / "results.txt"
    f.write_text("mine")
    for out in (f, f / "sub"):
        assert cli([*DIGITS, "--out", str(out)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("lightlayers run: error: ") and str(f) in line
        assert "is a file, not a folder" in line
        assert line.endswith(("choose another --out", "choose another folder"))
    assert f.read_text() == "mine"


@pytest.mark.parametrize("size", ["0", "-1"])
def test_absurd_small_size_is_one_line(size, tmp_path, capsys) -> None:
    assert cli([*DIGITS, "--size", size, "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "size" in line and size in line


def _limit_memory() -> None:
    # Without a size check the decoder would try to allocate 10 GB per image: fail fast.
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_absurd_large_size_is_one_line_before_any_work(tmp_path) -> None:
    env = {**os.environ, "LIGHTLAYERS_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([*LIGHTLAYERS, *DIGITS, "--size", "100000", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, preexec_fn=_limit_memory,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    line = _one_line(p.stderr)
    assert "size" in line and "100000" in line
    assert not (tmp_path / "cache" / "datasets").exists()  # nothing was decoded


# --- unusable environment: permissions (real denials, not simulated) ------------------------
@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Nothing can be created in ``folder``: mode 0555, or for root (whom modes do not stop)
    the immutable attribute."""
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_read_only_run_folder_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with _read_only(out):
        assert cli([*DIGITS, "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"lightlayers run: error: cannot write {out}/")
    assert "permission denied" in line and line.endswith("choose another --out")


def test_read_only_cache_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(cache))
    with _read_only(cache):
        assert cli([*DIGITS, "--out", str(tmp_path / "run")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(cache) in line and "LIGHTLAYERS_CACHE" in line


# --- a damaged results store ----------------------------------------------------------------
def test_store_file_that_is_not_a_database_is_named(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    # A run folder the tool made (its manifest), whose store was then damaged.
    (out / ".lightlayers.json").write_text('{"kind": "run", "files": ["results.db"]}')
    (out / "results.db").write_bytes(os.urandom(9000))
    assert cli([*DIGITS, "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{out.resolve()}/results.db is damaged (file is not a database)" in line
    assert line.endswith("move it away (e.g. to results.db.damaged) and rerun")
    assert cli(["report", str(out)]) == 2
    assert "results.db is damaged" in _one_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "run"
    assert cli([*DIGITS, "--seeds", "0,1", "--out", str(out)]) == 0
    return out


def test_damaged_page_is_found_when_the_store_opens(finished_run, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    db = out / "results.db"
    with open(db, "r+b") as f:  # page 3 of 4 KiB: a table's b-tree page, not the header
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    with pytest.raises(StoreError, match=f"^{db} is damaged .*move it away"):
        ResultsStore(db, create=False)
    assert cli(["report", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(db) in line and "damaged" in line


def test_intact_store_passes_the_check(finished_run) -> None:
    with ResultsStore(finished_run / "results.db", create=False) as store:
        assert store.counts()["done"] == 2


@pytest.mark.parametrize(("sqlite_message", "expected"), [
    ("database or disk is full", "disk full while writing {db}"),
    ("attempt to write a readonly database", "cannot write {db}: read-only"),
    ("database is locked", "{db} is locked by another process"),
    ("database disk image is malformed", "{db} is damaged (database disk image is malformed)"),
])
def test_sqlite_errors_are_named(sqlite_message, expected, tmp_path) -> None:
    db = tmp_path / "results.db"
    e = sqlite_error(db, sqlite3.OperationalError(sqlite_message))
    assert str(e).startswith(expected.format(db=db))


# --- diagnosis of collapsed trials ----------------------------------------------------------
def _history(train: float, val: float, epochs: int = 10) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "train_acc": train * (i + 1) / epochs, "val_acc": val}
            for i in range(epochs)]


def test_diagnose_names_unconverged_batchnorm_and_the_fix() -> None:
    (note,) = diagnose(_history(0.93, 0.10), None, Protocol(), 280, bn_momentum=0.01,
                       chance=0.10)
    assert note.startswith(DIAGNOSIS + "BatchNorm running statistics not converged: momentum "
                           "0.01 over 280 steps keeps 6% of the initial values")
    assert "--set bn_momentum=0.1" in note and "seed protocol" in note


def test_diagnose_other_cases() -> None:
    seed = Protocol()
    assert diagnose(_history(0.93, 0.85), None, seed, 280, bn_momentum=0.01, chance=0.1) == []
    # Converged statistics: not BatchNorm's fault.
    (note,) = diagnose(_history(0.93, 0.10), None, seed, 280, bn_momentum=0.1, chance=0.1)
    assert "BatchNorm" not in note and "does not generalise" in note
    (note,) = diagnose(_history(0.12, 0.10), None, seed, 280, bn_momentum=0.01, chance=0.1)
    assert "did not learn" in note and "--epochs" in note
    # One epoch of 21 steps: half-way trained, evaluated with 81% of the initial statistics.
    (note,) = diagnose(_history(0.49, 0.10, epochs=1), None, seed, 21, bn_momentum=0.01,
                       chance=0.1)
    assert "keeps 81% of the initial values" in note
    # Validation fine, but the test predictions collapsed to one class.
    test = {"accuracy": 0.74, "collapsed": True, "confusion": [[0, 160], [0, 464]]}
    (note,) = diagnose(_history(0.95, 0.9), test, seed, 100, bn_momentum=0.01)
    assert "test accuracy is 0.740 (one class predicted)" in note and "chance 0.744" in note


def test_collapsed_real_run_gets_the_diagnosis_in_store_and_report(tmp_path, capsys) -> None:
    """Digits, seed protocol, 10 epochs: Keras' BatchNorm momentum over 210 steps."""
    from lightlayers.report import write_report

    out = tmp_path / "run"
    assert cli(["run", "--data", "digits", "--models", "paper-separable", "--epochs", "10",
                "--protocol", "seed", "--quiet", "--no-report", "--out", str(out)]) == 0
    with ResultsStore(out / "results.db", create=False) as store:
        (trial,) = store.trials()
    assert trial["accuracy"] < 0.2
    notes = [n for n in trial["extra"]["notes"] if n.startswith(DIAGNOSIS)]
    assert len(notes) == 1 and "BatchNorm running statistics not converged" in notes[0]
    assert "over 210 steps" in notes[0] and "--set bn_momentum=0.1" in notes[0]
    capsys.readouterr()
    result = write_report(out, formats=("html", "md"), console=True)
    printed = " ".join(capsys.readouterr().out.split())  # the notes wrap at 80 columns
    assert "1 †" in printed and "BatchNorm running statistics not converged" in printed
    html = result.html.read_text()
    assert "id='diagnoses'" in html and "--set bn_momentum=0.1" in html
    assert "BatchNorm running statistics" in (out / "report" / "table.md").read_text()


@pytest.mark.slow
def test_demo_config_light_models_are_well_above_chance(tmp_path) -> None:
    out = tmp_path / "demo"
    # The shipped config as it is, on one of its two seeds (both collapsed before its fix).
    assert cli(["run", str(REPO / "configs" / "cpu-demo.yaml"), "--seeds", "1", "--out",
                str(out), "--quiet", "--no-report"]) == 0
    with ResultsStore(out / "results.db", create=False) as store:
        trials = store.trials()
    assert len(trials) == 3
    for t in trials:
        assert t["accuracy"] > 0.5, (t["model"], t["seed"], t["accuracy"])
        assert not t["collapsed"]
        assert not [n for n in t["extra"]["notes"] if n.startswith(DIAGNOSIS)]
