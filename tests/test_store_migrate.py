"""A run folder written before the results store's schema 2 (tests/fixtures/run-v1: metrics as
columns, six fixed fields per epoch) is reported and resumed; a read-only copy still reports;
a store of a newer schema is refused; non-finite values stay apart from missing ones."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lightlayers.cli import main as cli
from lightlayers.metrics.registry import epoch_metrics, trial_metrics
from lightlayers.runfolder import results_csv_text
from lightlayers.runfolder import store as store_module
from lightlayers.runfolder.store import SCHEMA_VERSION, ResultsStore, StoreError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run-v1"
MODELS = ("paper-light-k1", "study-light-k1")
RUN = ["run", "--data", "digits", "--models", ",".join(MODELS), "--epochs", "2", "--size", "8",
       "--protocol", "seed", "--no-report", "--quiet"]
V1_EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    out = tmp_path / "run-v1"
    shutil.copytree(FIXTURE, out)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _schema(db: Path) -> tuple[str, list[str]]:
    """(schema_version, the trials table's columns), read without changing the file."""
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        columns = [r[1] for r in conn.execute("PRAGMA table_info(trials)")]
    finally:
        conn.close()
    return version, columns


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_recorded(value: object) -> str:
    """A store value as results.csv writes it."""
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, bool) else str(value)


def test_the_fixture_is_a_schema_1_store() -> None:
    # The tests below mean something only while the fixture is what it stands for.
    version, columns = _schema(FIXTURE / "results.db")
    assert version == "1"
    assert {"accuracy", "auc", "collapsed", "params_total"} <= set(columns)
    assert [r["model"] for r in _rows(FIXTURE / "results.csv")] == list(MODELS)


def test_opening_migrates_in_place_and_keeps_every_number(v1: Path) -> None:
    old = _rows(FIXTURE / "results.csv")
    with ResultsStore(v1 / "results.db", create=False) as store:
        assert store.migrated_from == 1
        trials = store.trials()
        histories = [store.history(t["id"]) for t in trials]
    assert _schema(v1 / "results.db")[0] == str(SCHEMA_VERSION)
    assert [t["model"] for t in trials] == list(MODELS)
    for t, row in zip(trials, old, strict=True):
        for m in trial_metrics():
            # A metric registered since (ECE) is missing from the old trials, not invented.
            assert _as_recorded(t[m.name]) == row.get(m.name, ""), m.name
        assert isinstance(t["collapsed"], bool) and isinstance(t["params_total"], int)
    for h in histories:
        assert [e["epoch"] for e in h] == [1, 2]
        for e in h:
            assert all(isinstance(e[f], float) for f in V1_EPOCH_FIELDS)
            # Fields schema 1 did not record are missing, not invented.
            assert e["compiled"] is None and e["val_auc"] is None
            assert set(e) == {"epoch", *(m.name for m in epoch_metrics())}
    with ResultsStore(v1 / "results.db", create=False) as store:
        assert store.migrated_from is None  # once only
        assert store.trials() == trials


def test_a_failed_migration_leaves_the_store_as_it_was(v1: Path, monkeypatch) -> None:
    db = v1 / "results.db"
    columns = store_module._columns

    def fail_on_epochs(c: sqlite3.Connection, table: str) -> list[str]:
        if table == "epochs":  # after the trial metrics were copied
            raise sqlite3.OperationalError("disk I/O error")
        return columns(c, table)

    monkeypatch.setattr(store_module, "_columns", fail_on_epochs)
    with pytest.raises(StoreError, match=f"^{db}: disk I/O error"):
        ResultsStore(db, create=False)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            == ("1",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert "trial_metrics" not in tables and "epoch_metrics" not in tables


def test_report_of_a_schema_1_folder(v1: Path) -> None:
    assert cli(["report", str(v1), "--quiet"]) == 0
    table = {r["model"]: r for r in _rows(v1 / "report" / "table.csv")}
    assert list(table) == list(MODELS)
    for row in _rows(FIXTURE / "results.csv"):
        got = table[row["model"]]
        assert got["accuracy_mean"] == row["accuracy"] and got["accuracy_n"] == "1"
        assert got["auc_mean"] == row["auc"]
        assert float(got["params_total_mean"]) == int(row["params_total"])
    html = (v1 / "report" / "report.html").read_text()
    assert all(f"data-model='{m}'" in html for m in MODELS)


def test_resume_of_a_schema_1_folder(v1: Path) -> None:
    assert cli([*RUN, "--seeds", "0,1", "--out", str(v1)]) == 0
    with ResultsStore(v1 / "results.db", create=False) as store:
        trials = store.trials()
        new_history = store.history(trials[-1]["id"])
    assert [(t["model"], t["seed"], t["status"]) for t in trials] == [
        (MODELS[0], 0, "done"), (MODELS[1], 0, "done"),
        (MODELS[0], 1, "done"), (MODELS[1], 1, "done")]
    assert len({t["key"] for t in trials}) == 4
    assert [t["attempts"] for t in trials] == [1, 1, 1, 1]  # seed 0 was not trained again
    # The old trials' rows are the old file's, character for character (times included); a
    # metric registered since (ECE) is an empty cell for them and recorded for the new ones.
    old, new = _rows(FIXTURE / "results.csv"), _rows(v1 / "results.csv")
    assert len(new) == 4
    for before, now in zip(old, new[:2], strict=True):
        assert {k: now[k] for k in before} == before
        assert {k for k in now if now[k] and k not in before} == set()
    assert all(float(r["ece"]) >= 0 for r in new[2:])
    # A trial recorded now keeps every number of its history rows.
    assert [e["epoch"] for e in new_history] == [1, 2]
    assert all(e["compiled"] is False and e["val_loss"] > 0 for e in new_history)


@contextlib.contextmanager
def _read_only(*paths: Path) -> Iterator[None]:
    """Nothing in ``paths`` can be written or created: mode 0555/0444, or for root (whom modes
    do not stop) the immutable attribute."""
    root = os.geteuid() == 0
    for p in paths:
        if root:
            subprocess.run(["chattr", "+i", str(p)], check=True, capture_output=True)
        else:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p in paths:
            if root:
                subprocess.run(["chattr", "-i", str(p)], check=True)
            else:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_schema_1_folder_is_reported_as_it_is(v1: Path) -> None:
    db = v1 / "results.db"
    before = _digest(db)
    (v1 / "report").mkdir()  # the report's own folder stays writable
    with _read_only(v1, db):
        with ResultsStore(db, readonly=True) as store:
            assert store.migrated_from == 1  # in memory
            trials = store.trials()
            assert [t["model"] for t in trials] == list(MODELS)
            assert [e["epoch"] for e in store.history(trials[0]["id"])] == [1, 2]
            with pytest.raises(StoreError, match=f"^cannot write {db}: read-only"):
                store.set_meta(note="x")
        assert cli(["report", str(v1), "--quiet"]) == 0
    assert _digest(db) == before and _schema(db)[0] == "1"
    # No -wal or -shm file beside it either.
    assert sorted(p.name for p in v1.iterdir()) == sorted(
        [*(p.name for p in FIXTURE.iterdir()), "report"])
    table = {r["model"]: r for r in _rows(v1 / "report" / "table.csv")}
    for row in _rows(FIXTURE / "results.csv"):
        assert table[row["model"]]["accuracy_mean"] == row["accuracy"]


def test_store_of_a_newer_schema_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    db = run / "results.db"
    ResultsStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = _digest(db)
    for kwargs in ({}, {"create": False}, {"readonly": True}):
        with pytest.raises(StoreError) as e:
            ResultsStore(db, **kwargs)
        msg = str(e.value)
        assert msg.startswith(f"{db} was made by a newer lightlayers") and "\n" not in msg
        assert msg.endswith("upgrade lightlayers to open it")
    assert _digest(db) == before  # refused before writing anything
    assert cli(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(db) in err and "newer lightlayers" in err
    assert cli([*RUN, "--seeds", "0", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "newer lightlayers" in err
    assert _digest(db) == before


def test_non_finite_and_missing_values_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    key = "m|seed=0|seed|d"
    with ResultsStore(db) as store:
        store.add_trials([{"model": "m", "seed": 0, "protocol": "seed", "data": "d"}])
        store.mark_running(key)
        store.record_done(
            key,
            {"accuracy": float("nan"), "auc": np.float32("inf"), "test_loss": float("-inf"),
             "f1": 0.25, "threshold": None, "collapsed": np.bool_(False),
             "params_total": np.int64(7), "best_epoch": 2},
            history=[{"epoch": 1, "val_loss": float("nan"), "train_loss": float("inf"),
                      "lr": 0.1, "compiled": True, "grad_norm": 3},
                     {"epoch": 2, "val_auc": float("-inf"), "val_loss": 0.5}])
        (tmp_path / "results.csv").write_text(results_csv_text(store.trials()))
    with ResultsStore(db, create=False) as store:
        (t,) = store.trials()
        history = store.history(t["id"])
        raw = dict(store.conn.execute(
            "SELECT name, COALESCE(nonfinite, 'finite') FROM trial_metrics").fetchall())
    assert math.isnan(t["accuracy"]) and t["auc"] == math.inf and t["test_loss"] == -math.inf
    assert t["f1"] == 0.25 and t["best_epoch"] == 2 and type(t["best_epoch"]) is int
    assert t["collapsed"] is False and t["params_total"] == 7 and type(t["params_total"]) is int
    # Missing (None, or never given) is no row at all, and reads back as None.
    assert t["threshold"] is None and t["precision"] is None
    assert raw == {"accuracy": "nan", "auc": "inf", "test_loss": "-inf", "f1": "finite",
                   "collapsed": "finite", "params_total": "finite", "best_epoch": "finite"}
    first, second = history
    assert math.isnan(first["val_loss"]) and first["train_loss"] == math.inf
    assert first["compiled"] is True and first["grad_norm"] == 3 and first["val_acc"] is None
    assert second["val_auc"] == -math.inf and second["val_loss"] == 0.5
    assert second["compiled"] is None and "grad_norm" not in second
    (row,) = _rows(tmp_path / "results.csv")
    assert (row["accuracy"], row["auc"], row["test_loss"]) == ("nan", "inf", "-inf")
    assert (row["threshold"], row["precision"], row["collapsed"]) == ("", "", "0")


def test_what_the_store_cannot_hold_is_refused(tmp_path: Path) -> None:
    key = "m|seed=0|seed|d"
    with ResultsStore(tmp_path / "results.db") as store:
        store.add_trials([{"model": "m", "seed": 0, "protocol": "seed", "data": "d"}])
        store.mark_running(key)
        with pytest.raises(StoreError, match=r"unknown metrics \['acuracy'\]"):
            store.record_done(key, {"acuracy": 0.5})
        with pytest.raises(StoreError, match="val_loss of epoch 1: 'low' is not a number"):
            store.record_done(key, {"accuracy": 0.5}, [{"epoch": 1, "val_loss": "low"}])
        # Nothing of either attempt was recorded.
        (t,) = store.trials()
        assert t["status"] == "running" and t["accuracy"] is None
