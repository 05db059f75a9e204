"""The test-split ledger: which settings have been scored on a test split, and when.

A test score is an honest estimate only while the test split chooses nothing; each further
setting scored on the same split and compared by hand spends a little of that. The ledger keeps
count across run folders: every trial scored on a test split appends one row (the split's test
fingerprint, the trial's settings hash, the time) to ``$LIGHTLAYERS_CACHE/test_ledger.sqlite``,
and ``lightlayers data ledger`` and the report say how many distinct settings a split has seen.

Rows are only ever inserted (SQLite serialises concurrent writers). The driver that records
results writes them, so workers elsewhere (Ray) never need the cache. A ledger that cannot be
written (a read-only cache) costs one warning, never a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightlayers.data.cache import cache_root

if TYPE_CHECKING:
    from lightlayers.config import Protocol, StudyConfig
    from lightlayers.data import Dataset

__all__ = ["LEDGER_FILE", "LedgerError", "SplitUse", "StudyLedger", "ledger_path",
           "ledger_sentence", "record_score", "settings_used", "split_uses", "test_fingerprint"]

LEDGER_FILE = "test_ledger.sqlite"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS scored (test TEXT NOT NULL, settings TEXT NOT NULL, "
           "at TEXT NOT NULL, data TEXT, model TEXT, seed INTEGER, protocol TEXT, run TEXT)")
# One warning per ledger file and process: a study of many trials on a read-only cache.
_warned: set[str] = set()


class LedgerError(Exception):
    """The ledger exists but cannot be read; the message names the file."""


@dataclass(frozen=True)
class SplitUse:
    """How one test split has been used: distinct settings, scores, first and last time."""

    test: str
    settings: int
    scores: int
    first: str
    last: str
    data: str


def ledger_path() -> Path:
    return cache_root() / LEDGER_FILE


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def test_fingerprint(fingerprint: dict[str, Any]) -> str | None:
    """The test split's identity from a data fingerprint (:mod:`lightlayers.fingerprint`):
    the source's content, the classes and the test split's members, so the validation carve,
    the decode size and the path's spelling leave it unchanged. None when not recorded."""
    members = ((fingerprint.get("split") or {}).get("members") or {}).get("test")
    if not members or "content" not in fingerprint:
        return None
    return _digest({"content": fingerprint["content"], "classes": fingerprint.get("classes"),
                    "test": members})


def trial_settings(cfg: StudyConfig, protocol: Protocol, model: str, seed: int,
                   fingerprint: dict[str, Any], data_key: str) -> dict[str, Any]:
    """Everything that changes one trial's numbers: the study's settings less those of other
    models, this model's options and input size, the resolved protocol, the seed, and the data
    (its decode key and its fingerprint, which holds the train and validation members)."""
    from lightlayers.config import comparable_settings as _settings
    from lightlayers.trial import input_sizes, model_kwargs

    common = _settings(cfg)
    for k in ("sizes", "model_options", "weights", "size"):
        common.pop(k, None)
    return {"study": common, "model": model, "seed": seed,
            "protocol": dataclasses.asdict(protocol), "model_options": model_kwargs(cfg, model),
            "input": list(input_sizes(cfg, model)), "data": data_key,
            "data_fingerprint": _digest(fingerprint)}


def record_score(test: str, settings: dict[str, Any], data: str, model: str, seed: int,
                 protocol: str, run: str, warn: Callable[[str], None] | None = None) -> bool:
    """Append one score to the ledger; False (and one warning per file) when it cannot."""
    path = ledger_path()
    row = (test, _digest(settings), datetime.now(UTC).isoformat(timespec="seconds"), data,
           model, seed, protocol, run)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=30)) as db, db:
            db.execute(_SCHEMA)
            db.execute("INSERT INTO scored VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return True
    except (OSError, sqlite3.Error) as e:
        if str(path) not in _warned:
            _warned.add(str(path))
            msg = (f"test-split ledger {path} cannot be written ({e}); results are recorded "
                   "as usual, only the count of settings scored on the test split misses them")
            if warn is not None:
                warn(f"warning: {msg}")
            else:
                warnings.warn(msg, stacklevel=2)
        return False


def _read(query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    path = ledger_path()
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                     timeout=30)) as db:
            return db.execute(query, args).fetchall()
    except sqlite3.Error as e:
        raise LedgerError(f"cannot read the test-split ledger {path} ({e}); move it aside to "
                          "start a new one") from e


def split_uses(test: str | None = None) -> list[SplitUse]:
    """Per test split (or only ``test``): distinct settings scored, scores, first and last
    time, the data's name; oldest first."""
    where = "WHERE test = ?" if test else ""
    rows = _read("SELECT test, COUNT(DISTINCT settings), COUNT(*), MIN(at), MAX(at), "
                 f"MAX(data) FROM scored {where} GROUP BY test ORDER BY MIN(at)",
                 (test,) if test else ())
    return [SplitUse(*r) for r in rows]


def settings_used(test: str) -> list[dict[str, Any]]:
    """One row per distinct settings scored on ``test``: model, seed, protocol, scores, first
    and last time, the last run folder."""
    rows = _read("SELECT settings, MAX(model), MAX(seed), MAX(protocol), COUNT(*), MIN(at), "
                 "MAX(at), MAX(run) FROM scored WHERE test = ? GROUP BY settings "
                 "ORDER BY MIN(at)", (test,))
    keys = ("settings", "model", "seed", "protocol", "scores", "first", "last", "run")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def ledger_sentence(fingerprint: dict[str, Any] | None) -> str | None:
    """The report's sentence on the test split of the data a run folder recorded, or None
    (no fingerprint recorded, nothing in the ledger, or the ledger unreadable: the report
    never fails over it)."""
    test = test_fingerprint(fingerprint or {})
    if test is None:
        return None
    try:
        uses = split_uses(test)
    except LedgerError:
        return None
    if not uses:
        return None
    u = uses[0]
    return (f"The test split of this data has been scored under {u.settings} distinct "
            f"setting(s) ({u.scores} score(s), {u.first[:10]} to {u.last[:10]}; "
            "`lightlayers data ledger` lists them): the more settings compared on one test "
            "split, the more optimistic the best of them.")


def record_rescore(trial: Any, ds: Dataset) -> bool:
    """A finished trial (:class:`lightlayers.runfolder.trials.FinishedTrial`) scored on the test
    split again, by an export's own check: appended under the settings it was trained with. A run
    folder whose recorded config this lightlayers cannot rebuild is passed over."""
    from lightlayers.config import ConfigError, config_from_dict

    try:
        cfg = config_from_dict(dict(trial.meta.get("config") or {}))
        protocol = cfg.resolved_protocol()
    except (ConfigError, TypeError, ValueError):
        return False
    return StudyLedger(cfg, protocol, trial.run_dir).scored(
        trial.model_name, trial.seed, ds, str(trial.row.get("data", "")))


class StudyLedger:
    """What ``run_study`` appends to the ledger as each trial's test score is recorded."""

    def __init__(self, cfg: StudyConfig, protocol: Protocol, run_dir: Path,
                 warn: Callable[[str], None] | None = None) -> None:
        self.cfg, self.protocol, self.run_dir, self.warn = cfg, protocol, run_dir, warn
        self._fingerprints: dict[int, dict[str, Any]] = {}

    def scored(self, model: str, seed: int, ds: Dataset, data_key: str) -> bool:
        from lightlayers.fingerprint import data_fingerprint

        if id(ds) not in self._fingerprints:  # hashing a split's members once per dataset
            self._fingerprints[id(ds)] = data_fingerprint(ds)
        fp = self._fingerprints[id(ds)]
        test = test_fingerprint(fp)
        if test is None:
            return False
        settings = trial_settings(self.cfg, self.protocol, model, seed, fp, data_key)
        return record_score(test, settings, ds.name, model, seed, self.cfg.protocol,
                            str(self.run_dir), self.warn)
