"""The results store: one SQLite file per run folder, the only record of a study.

Every write is one transaction, so a crash (even ``kill -9``) leaves each trial either as it was
or fully recorded. Trials are keyed ``model|seed|protocol|data`` and never recorded twice.

Metrics are rows, not columns: ``trial_metrics`` holds one (trial, name, value) row per metric
of :mod:`lightlayers.metrics.registry` a trial recorded, ``epoch_metrics`` one (trial, epoch,
name, value) row per number of each epoch of its training history. A metric added to the
registry needs no change here, and a store written before it simply has no rows of it. A
missing value has no row; a non-finite one (nan, inf, -inf) has a row whose ``value`` is NULL
and whose ``nonfinite`` says which.

Schema 1 (lightlayers 0.1) had one column of the trials table per metric and six fixed fields
per epoch. Opening such a store migrates it in place, in one transaction: its metric columns
and epoch rows are copied into the two tables above (the old columns and the ``epochs`` table
stay, no longer read or written). A store opened read-only whose file cannot be written is
migrated in a copy in memory. A store of a newer schema is refused.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lightlayers.metrics.registry import epoch_metrics, trial_metrics
from lightlayers.runfolder.errors import RunFolderError

SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed")
NONFINITE = ("nan", "inf", "-inf")

# The trials table's own columns, in the order trials() returns them (metrics come between
# finished_at and confusion, as the columns of schema 1 did).
TRIAL_COLUMNS = ("id", "key", "model", "seed", "protocol", "data", "status", "attempts",
                 "error", "config", "started_at", "finished_at", "confusion", "extra",
                 "checkpoint")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS trials (
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
    confusion TEXT,
    extra TEXT,
    checkpoint TEXT
)""",
    # value without a declared type: an int stays an int, a float a float.
    f"""CREATE TABLE IF NOT EXISTS trial_metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value,
    nonfinite TEXT CHECK (nonfinite IN {NONFINITE!r}),
    CHECK ((value IS NULL) != (nonfinite IS NULL)),
    PRIMARY KEY (trial_id, name)
) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS epoch_metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    name TEXT NOT NULL,
    value,
    nonfinite TEXT CHECK (nonfinite IN {NONFINITE!r}),
    CHECK ((value IS NULL) != (nonfinite IS NULL)),
    PRIMARY KEY (trial_id, epoch, name)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS predictions (
    trial_id INTEGER PRIMARY KEY REFERENCES trials(id) ON DELETE CASCADE,
    classes TEXT NOT NULL,
    labels TEXT NOT NULL,
    probs TEXT NOT NULL
)""",
)


class StoreError(RunFolderError, RuntimeError):
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


def _cannot_write(e: sqlite3.DatabaseError) -> bool:
    low = str(e).lower()
    return any(s in low for s in ("readonly", "read-only", "unable to open", "permission"))


class ResultsStore:
    """A run folder's ``results.db``.

    ``create``: make the file when there is none (else a missing file is a StoreError).
    ``readonly``: only read (the report): nothing is written, unless the store is of schema 1
    and its file can be written, which migrates it in place; the file of a read-only folder is
    read as it is, a schema-1 one migrated in a copy in memory.

    Example:
        >>> store = ResultsStore("runs/check/results.db")
        >>> [t["model"] for t in store.trials(status="done")]
    """

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        # The schema version the file had when opened, when this opening migrated it.
        self.migrated_from: int | None = None
        create = create and not readonly
        if not create and not self.path.is_file():
            raise StoreError(
                f"no results store at {self.path}; run `lightlayers run ... --out "
                f"{self.path.parent}` first"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file() and self.path.stat().st_size > 0
        self._conn: sqlite3.Connection | None = None
        self._immutable = False  # read as an unchanging file (see _connect)
        try:
            self._conn = self._connect()
            if existed:
                self._quick_check()
            version = self._version()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was made by a newer lightlayers (results store schema "
                    f"{version}; this one reads {SCHEMA_VERSION} and older); upgrade lightlayers "
                    "to open it")
            self._conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
            self._open_schema(version, create)
            if readonly:
                self._conn.execute("PRAGMA query_only = ON")
        except BaseException as e:
            if self._conn is not None:
                self._conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise sqlite_error(self.path, e) from e
            raise

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        else:
            uri = self.path.absolute().as_uri()
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            except sqlite3.OperationalError as e:
                conn.close()
                if "unable to open" not in str(e).lower():
                    raise
                # A store in WAL mode needs its -shm file, which a read-only folder without
                # one cannot get; with no -wal file beside it either, every committed
                # transaction is in the file itself, which is then read as it is.
                conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True,
                                       isolation_level=None)
                self._immutable = True
        conn.row_factory = sqlite3.Row
        return conn

    def _quick_check(self) -> None:
        # A damaged page would otherwise surface later, half-way through a study, as a bare
        # "database disk image is malformed". quick_check reads every page once (milliseconds
        # for a results store) without the slower index cross-checks.
        assert self._conn is not None
        rows = [r[0] for r in self._conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            found = [ln.strip() for r in rows for ln in str(r).splitlines()
                     if ln.strip() and not ln.startswith("***")]
            raise sqlite3.DatabaseError("; ".join(found[:3]) or "quick_check failed")

    def _version(self) -> int | None:
        """The file's schema version; None for a file without one (a new store)."""
        assert self._conn is not None
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if has_meta is None:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        try:
            return int(row[0])
        except ValueError:
            raise sqlite3.DatabaseError(f"schema version {row[0]!r} is not a number") from None

    def _open_schema(self, version: int | None, create: bool) -> None:
        if version is None:
            if not create:
                raise sqlite3.DatabaseError("no schema version: not a results store")
            with self._tx() as c:
                for statement in _SCHEMA:
                    c.execute(statement)
                c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                          (str(SCHEMA_VERSION),))
        elif version < 1:
            raise sqlite3.DatabaseError(f"unknown schema version {version}")
        elif version < SCHEMA_VERSION:
            self._migrate(version)
        elif create:
            with self._tx() as c:  # a store of this version written before a table was added
                for statement in _SCHEMA:
                    c.execute(statement)

    def _migrate(self, version: int) -> None:
        """Bring a store of schema ``version`` to :data:`SCHEMA_VERSION`, in one transaction:
        in place when the file can be written, else (read-only) in a copy in memory."""
        assert self._conn is not None
        if not self.readonly:
            with self._tx() as c:
                _migrate(c, version)
            self.migrated_from = version
            return
        try:
            if self._immutable:  # its folder cannot be written (see _connect)
                raise sqlite3.OperationalError("unable to open database file")
            writer = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have migrated it since this one read the version.
                    row = writer.execute(
                        "SELECT value FROM meta WHERE key='schema_version'").fetchone()
                    if int(row[0]) < SCHEMA_VERSION:
                        _migrate(writer, int(row[0]))
                except BaseException:
                    writer.execute("ROLLBACK")
                    raise
                writer.execute("COMMIT")
            finally:
                writer.close()
        except sqlite3.OperationalError as e:
            if not _cannot_write(e):
                raise
            memory = sqlite3.connect(":memory:", isolation_level=None)
            self._conn.backup(memory)
            self._conn.close()
            self._conn = memory
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._tx() as c:
                _migrate(c, version)
        self.migrated_from = version

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- meta -----------------------------------------------------------------------------
    @_named_errors
    def set_meta(self, **items: Any) -> None:
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()])

    @_named_errors
    def meta(self) -> dict[str, Any]:
        rows = self.conn.execute("SELECT key, value FROM meta WHERE key != 'schema_version'")
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
        """Record a finished trial, its history and its predictions in one transaction.

        ``metrics``: registered trial metrics (None: not recorded); ``history``: one dict per
        epoch with its ``epoch`` number, every number of which is recorded.
        """
        known = {m.name for m in trial_metrics()}
        unknown = set(metrics) - known
        if unknown:
            raise StoreError(f"unknown metrics {sorted(unknown)}: not in the metric registry "
                             "(lightlayers.metrics.registry)")
        metric_rows = [(name, *cell) for name, v in metrics.items()
                       if (cell := _cell(v, name)) is not None]
        epoch_rows = []
        for h in history:
            epoch = int(h["epoch"])
            epoch_rows += [(epoch, name, *cell) for name, v in h.items()
                           if name != "epoch" and (cell := _cell(v, f"{name} of epoch {epoch}"))
                           is not None]
        with self._tx() as c:
            row = c.execute("SELECT id, status FROM trials WHERE key=?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"no trial {key} in {self.path}")
            if row["status"] == "done":
                raise StoreError(f"trial {key} is already recorded as done")
            tid = row["id"]
            c.execute(
                "UPDATE trials SET status='done', error=NULL, finished_at=?, confusion=?, "
                "extra=?, checkpoint=? WHERE id=?",
                (time.time(), json.dumps(confusion) if confusion is not None else None,
                 json.dumps(extra or {}, sort_keys=True, default=str), checkpoint, tid),
            )
            c.execute("DELETE FROM trial_metrics WHERE trial_id=?", (tid,))
            c.executemany("INSERT INTO trial_metrics VALUES (?, ?, ?, ?)",
                          [(tid, *r) for r in metric_rows])
            c.execute("DELETE FROM epoch_metrics WHERE trial_id=?", (tid,))
            c.executemany("INSERT INTO epoch_metrics VALUES (?, ?, ?, ?, ?)",
                          [(tid, *r) for r in epoch_rows])
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
    def add_metrics(self, key: str, metrics: dict[str, Any]) -> list[str]:
        """Add to a finished trial the registered ``metrics`` it has not recorded (numbers
        measured later from its checkpoint, lightlayers.deploy.backfill); one it has keeps
        its first value. Returns the names added."""
        known = {m.name for m in trial_metrics()}
        unknown = set(metrics) - known
        if unknown:
            raise StoreError(f"unknown metrics {sorted(unknown)}: not in the metric registry "
                             "(lightlayers.metrics.registry)")
        with self._tx() as c:
            row = c.execute("SELECT id, status FROM trials WHERE key=?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"no trial {key} in {self.path}")
            if row["status"] != "done":
                raise StoreError(f"trial {key} is {row['status']}, not done: nothing to add to")
            have = {r[0] for r in c.execute("SELECT name FROM trial_metrics WHERE trial_id=?",
                                            (row["id"],))}
            rows = [(name, *cell) for name, v in sorted(metrics.items())
                    if name not in have and (cell := _cell(v, name)) is not None]
            c.executemany("INSERT INTO trial_metrics VALUES (?, ?, ?, ?)",
                          [(row["id"], *r) for r in rows])
        return [r[0] for r in rows]

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
        """Trials as dicts, in insertion order: the trial's columns (JSON ones decoded) and
        every registered trial metric (None when not recorded), each of its registered type,
        plus any other metric the store holds for it."""
        where, args = "", []
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
            where = " WHERE status=?"
            args.append(status)
        with self._read() as c:
            rows = c.execute(f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials{where} ORDER BY id",
                             args).fetchall()
            values: dict[int, dict[str, Any]] = {}
            for r in c.execute("SELECT m.trial_id, m.name, m.value, m.nonfinite "
                               "FROM trial_metrics m JOIN trials t ON t.id = m.trial_id"
                               + where.replace("status", "t.status") + " ORDER BY m.name",
                               args):
                values.setdefault(r[0], {})[r[1]] = _value(r[2], r[3])
        registered = trial_metrics()
        out = []
        for r in rows:
            row = dict(r)
            tail = {c: row.pop(c) for c in ("confusion", "extra", "checkpoint")}
            stored = values.get(row["id"], {})
            row.update({m.name: m.convert(stored.pop(m.name, None)) for m in registered})
            row.update(stored)  # metrics recorded by a newer or extended lightlayers
            row.update(tail)
            out.append(_decode_trial(row))
        if keys is not None:
            wanted = set(keys)
            out = [r for r in out if r["key"] in wanted]
        return out

    @_named_errors
    def history(self, trial_id: int) -> list[dict[str, Any]]:
        """One dict per epoch, in order: ``epoch``, every registered per-epoch metric (None
        when not recorded), each of its registered type, and every other number recorded."""
        registered = epoch_metrics()
        epochs: dict[int, dict[str, Any]] = {}
        rows = self.conn.execute(
            "SELECT epoch, name, value, nonfinite FROM epoch_metrics WHERE trial_id=? "
            "ORDER BY epoch, name", (trial_id,))
        for r in rows:
            epochs.setdefault(r["epoch"], {})[r["name"]] = _value(r["value"], r["nonfinite"])
        out = []
        for epoch, stored in epochs.items():
            row: dict[str, Any] = {"epoch": epoch}
            row.update({m.name: m.convert(stored.pop(m.name, None)) for m in registered})
            row.update(stored)
            out.append(row)
        return out

    @_named_errors
    def predictions(self, trial_id: int) -> dict[str, Any] | None:
        """``{"classes": [...], "labels": int array (N,), "probs": float array (N, C)}``."""
        r = self.conn.execute("SELECT * FROM predictions WHERE trial_id=?", (trial_id,)).fetchone()
        if r is None:
            return None
        return {"classes": json.loads(r["classes"]),
                "labels": np.asarray(json.loads(r["labels"]), dtype=np.int64),
                "probs": np.asarray(json.loads(r["probs"]), dtype=np.float64)}

    @_named_errors
    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one state of the file (a study may be writing meanwhile)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")


def _migrate(c: sqlite3.Connection, version: int) -> None:
    """Schema 1 -> 2 inside the caller's transaction: each metric column of the trials table
    and each field of the epochs table becomes rows of trial_metrics and epoch_metrics (NULL,
    which schema 1 wrote for missing and non-finite values alike, becomes no row)."""
    if version != 1:
        raise StoreError(f"no migration from results store schema {version}")
    for statement in _SCHEMA:
        c.execute(statement)
    for col in _columns(c, "trials"):
        if col not in TRIAL_COLUMNS:
            c.execute(f"INSERT INTO trial_metrics (trial_id, name, value) "
                      f"SELECT id, ?, {_quote(col)} FROM trials WHERE {_quote(col)} IS NOT NULL",
                      (col,))
    for col in _columns(c, "epochs"):
        if col not in ("trial_id", "epoch"):
            c.execute(f"INSERT INTO epoch_metrics (trial_id, epoch, name, value) "
                      f"SELECT trial_id, epoch, ?, {_quote(col)} FROM epochs "
                      f"WHERE {_quote(col)} IS NOT NULL", (col,))
    c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))


def _columns(c: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in c.execute(f"PRAGMA table_info({_quote(table)})")]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cell(v: Any, what: str) -> tuple[Any, str | None] | None:
    """(value, nonfinite) of one number as stored; None for a missing value (no row)."""
    if v is None:
        return None
    if isinstance(v, bool | np.bool_):
        return int(v), None
    if isinstance(v, int | np.integer):
        return int(v), None
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isfinite(v):
            return v, None
        return None, "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    raise StoreError(f"{what}: {v!r} is not a number")


def _value(value: Any, nonfinite: str | None) -> Any:
    return float(nonfinite) if nonfinite is not None else value


def _decode_trial(row: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "confusion", "extra"):
        if row.get(col) is not None:
            row[col] = json.loads(row[col])
    return row
