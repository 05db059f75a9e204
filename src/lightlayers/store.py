"""The results store: one SQLite file per run folder, the only record of a study.

Every write is one transaction, so a crash (even ``kill -9``) leaves each trial either as it was
or fully recorded. Trials are keyed ``model|seed|protocol|data`` and never recorded twice.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")

# Scalar result columns of the trials table, in the order results.csv shows them.
METRIC_COLUMNS: dict[str, str] = {
    "params_total": "INTEGER",
    "params_trainable": "INTEGER",
    "size_mb": "REAL",
    "macs": "INTEGER",
    "test_loss": "REAL",
    "accuracy": "REAL",
    "balanced_accuracy": "REAL",
    "sensitivity": "REAL",
    "specificity": "REAL",
    "precision": "REAL",
    "f1": "REAL",
    "auc": "REAL",
    "collapsed": "INTEGER",
    "threshold": "REAL",
    "total_time_s": "REAL",
    "epoch_time_s": "REAL",
    "first_epoch_s": "REAL",
    "feature_time_s": "REAL",
    "infer_img_s": "REAL",
    "latency_ms": "REAL",
    "best_epoch": "INTEGER",
    "epochs_run": "INTEGER",
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    config TEXT,
    started_at REAL,
    finished_at REAL,
    {", ".join(f"{c} {t}" for c, t in METRIC_COLUMNS.items())},
    confusion TEXT,
    extra TEXT,
    checkpoint TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_loss REAL, val_acc REAL, lr REAL, time_s REAL,
    PRIMARY KEY (trial_id, epoch)
);
CREATE TABLE IF NOT EXISTS predictions (
    trial_id INTEGER PRIMARY KEY REFERENCES trials(id) ON DELETE CASCADE,
    classes TEXT NOT NULL,
    labels TEXT NOT NULL,
    probs TEXT NOT NULL
);
"""


class StoreError(RuntimeError):
    """The results store is missing, unreadable or inconsistent; the message names the file."""


def sqlite_error(path: Path, e: sqlite3.DatabaseError) -> StoreError:
    """A :class:`StoreError` naming ``path`` that says what SQLite's error means and the fix."""
    detail = str(e).strip() or type(e).__name__
    low = detail.lower()
    if "readonly" in low or "read-only" in low:
        msg = f"cannot write {path}: read-only file or folder; choose another --out"
    elif "disk is full" in low:
        msg = f"disk full while writing {path}; free some space or choose another --out"
    elif "locked" in low or "busy" in low:
        msg = f"{path} is locked by another process; wait for it or choose another --out"
    elif "unable to open" in low:
        msg = f"cannot open {path} ({detail}); check that its folder exists and is writable"
    elif "disk i/o error" in low:
        msg = f"{path}: disk I/O error; check the disk, or move the file away and rerun"
    else:
        msg = (f"{path} is damaged ({detail}); move it away (e.g. to {path.name}.damaged) "
               "and rerun")
    return StoreError(msg)


_F = TypeVar("_F", bound=Callable[..., Any])


def _named_errors(method: _F) -> _F:
    """SQLite errors of a store method become a StoreError naming the file. Constraint
    violations (IntegrityError) are bugs here, not a damaged file, and pass through."""

    @functools.wraps(method)
    def wrapper(self: ResultsStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as e:
            raise sqlite_error(self.path, e) from e

    return wrapper  # type: ignore[return-value]


def trial_key(model: str, seed: int, protocol: str, data: str) -> str:
    return f"{model}|seed={seed}|{protocol}|{data}"


class ResultsStore:
    """A run folder's ``results.db``.

    Example:
        >>> store = ResultsStore("runs/check/results.db")
        >>> [t["model"] for t in store.trials(status="done")]
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(
                f"no results store at {self.path}; run `lightlayers run ... --out "
                f"{self.path.parent}` first"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            if existed:
                # A damaged page would otherwise surface later, half-way through a study, as a
                # bare "database disk image is malformed". quick_check reads every page once
                # (milliseconds for a results store) without the slower index cross-checks.
                rows = [r[0] for r in self._conn.execute("PRAGMA quick_check(3)")]
                if rows != ["ok"]:
                    self._conn.close()
                    found = [ln.strip() for r in rows for ln in str(r).splitlines()
                             if ln.strip() and not ln.startswith("***")]
                    raise sqlite3.DatabaseError("; ".join(found[:3]) or "quick_check failed")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            if create:
                # executescript commits on its own; the statements are all IF NOT EXISTS.
                self._conn.executescript(_SCHEMA)
            with self._tx() as c:
                version = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if version is None:
                    c.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
                elif int(version[0]) != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version[0]}, this lightlayers reads "
                        f"{SCHEMA_VERSION}; use a new --out folder"
                    )
        except sqlite3.DatabaseError as e:
            raise sqlite_error(self.path, e) from e

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- meta -----------------------------------------------------------------------------
    @_named_errors
    def set_meta(self, **items: Any) -> None:
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()])

    @_named_errors
    def meta(self) -> dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM meta WHERE key != 'schema_version'")
        return {r["key"]: json.loads(r["value"]) for r in rows}

    # --- trials ---------------------------------------------------------------------------
    @_named_errors
    def add_trials(self, specs: Iterable[dict[str, Any]]) -> None:
        """Insert ``{model, seed, protocol, data, config}`` rows as pending; existing keys stay."""
        with self._tx() as c:
            for s in specs:
                key = trial_key(s["model"], s["seed"], s["protocol"], s["data"])
                c.execute(
                    "INSERT OR IGNORE INTO trials (key, model, seed, protocol, data, status, "
                    "config) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (key, s["model"], s["seed"], s["protocol"], s["data"],
                     json.dumps(s.get("config", {}), sort_keys=True)),
                )

    @_named_errors
    def reset_interrupted(self) -> list[str]:
        """Trials left ``running`` by a crash go back to ``pending``; returns their keys."""
        with self._tx() as c:
            keys = [r[0] for r in c.execute("SELECT key FROM trials WHERE status='running'")]
            c.execute("UPDATE trials SET status='pending', started_at=NULL WHERE status='running'")
        return keys

    @_named_errors
    def mark_running(self, key: str) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE trials SET status='running', attempts=attempts+1, started_at=?, "
                "error=NULL WHERE key=? AND status IN ('pending', 'failed')",
                (time.time(), key),
            )
            if cur.rowcount != 1:
                raise StoreError(f"trial {key} is not pending (already done or running)")

    @_named_errors
    def record_done(
        self,
        key: str,
        metrics: dict[str, Any],
        history: Sequence[dict[str, Any]] = (),
        predictions: dict[str, Any] | None = None,
        confusion: Sequence[Sequence[int]] | None = None,
        extra: dict[str, Any] | None = None,
        checkpoint: str | None = None,
    ) -> None:
        """Record a finished trial, its history and its predictions in one transaction."""
        unknown = set(metrics) - set(METRIC_COLUMNS)
        if unknown:
            raise StoreError(f"unknown metric columns: {sorted(unknown)}")
        cols = list(metrics)
        values = [_sql_value(metrics[c]) for c in cols]
        with self._tx() as c:
            row = c.execute("SELECT id, status FROM trials WHERE key=?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"no trial {key} in {self.path}")
            if row["status"] == "done":
                raise StoreError(f"trial {key} is already recorded as done")
            tid = row["id"]
            assignments = "".join(f", {col}=?" for col in cols)
            c.execute(
                f"UPDATE trials SET status='done', error=NULL, finished_at=?{assignments}, "
                "confusion=?, extra=?, checkpoint=? WHERE id=?",
                (time.time(), *values, json.dumps(confusion) if confusion is not None else None,
                 json.dumps(extra or {}, sort_keys=True, default=str), checkpoint, tid),
            )
            c.execute("DELETE FROM epochs WHERE trial_id=?", (tid,))
            c.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(tid, h["epoch"], _sql_value(h.get("train_loss")), _sql_value(h.get("train_acc")),
                  _sql_value(h.get("val_loss")), _sql_value(h.get("val_acc")),
                  _sql_value(h.get("lr")), _sql_value(h.get("time_s"))) for h in history],
            )
            c.execute("DELETE FROM predictions WHERE trial_id=?", (tid,))
            if predictions is not None:
                c.execute(
                    "INSERT INTO predictions VALUES (?, ?, ?, ?)",
                    (tid, json.dumps(list(predictions["classes"])),
                     json.dumps(np.asarray(predictions["labels"]).astype(int).tolist()),
                     # Full precision: rounding creates ties that move the ROC AUC.
                     json.dumps(np.asarray(predictions["probs"], dtype=float).tolist())),
                )

    @_named_errors
    def record_failed(self, key: str, error: str, extra: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE trials SET status='failed', error=?, finished_at=?, extra=? "
                "WHERE key=? AND status != 'done'",
                (error, time.time(), json.dumps(extra or {}, sort_keys=True, default=str), key),
            )

    # --- reading --------------------------------------------------------------------------
    @_named_errors
    def trials(self, status: str | None = None, keys: Iterable[str] | None = None
               ) -> list[dict[str, Any]]:
        """Trials as dicts (JSON columns decoded), in insertion order."""
        sql, args = "SELECT * FROM trials", []
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
            sql += " WHERE status=?"
            args.append(status)
        rows = [_decode_trial(dict(r)) for r in self._conn.execute(sql + " ORDER BY id", args)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r["key"] in wanted]
        return rows

    @_named_errors
    def history(self, trial_id: int) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT epoch, train_loss, train_acc, val_loss, val_acc, lr, time_s FROM epochs "
            "WHERE trial_id=? ORDER BY epoch", (trial_id,))
        return [dict(r) for r in rows]

    @_named_errors
    def predictions(self, trial_id: int) -> dict[str, Any] | None:
        """``{"classes": [...], "labels": int array (N,), "probs": float array (N, C)}``."""
        r = self._conn.execute("SELECT * FROM predictions WHERE trial_id=?", (trial_id,)).fetchone()
        if r is None:
            return None
        return {"classes": json.loads(r["classes"]),
                "labels": np.asarray(json.loads(r["labels"]), dtype=np.int64),
                "probs": np.asarray(json.loads(r["probs"]), dtype=np.float64)}

    @_named_errors
    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out


def _sql_value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool | np.bool_):
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        v = float(v)
        return v if np.isfinite(v) else None
    return v


def _decode_trial(row: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "confusion", "extra"):
        if row.get(col) is not None:
            row[col] = json.loads(row[col])
    if row.get("collapsed") is not None:
        row["collapsed"] = bool(row["collapsed"])
    return row
