"""The Python face of ``lightlayers run``: run a study, open a run folder, read its trials.

Example::

    import lightlayers as L

    run = L.run_study(data="digits", models=["paper-light-k2", "paper-conv"], seeds=[0, 1],
                      epochs=2, size=8, out="runs/demo")
    df = L.open_run("runs/demo").to_pandas()   # needs pip install 'lightlayers[pandas]'

Everything here reads the run folder's ``results.db``, the one record of a study, read-only:
a :class:`Run` can be opened while ``lightlayers run`` is still writing to the folder, and
what it returns is the record as it was at that call.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas

    from lightlayers.config import StudyConfig

__all__ = ["Predictions", "Run", "RunError", "Trial", "open_run", "run_study"]

# The trials table's own columns that a trial record carries under its own field names; every
# other key of a store row is a metric.
_TRIAL_FIELDS = ("id", "key", "model", "seed", "protocol", "data", "status", "attempts", "error",
                 "config", "started_at", "finished_at", "confusion", "extra", "checkpoint")
_STATUSES = ("pending", "running", "done", "failed")
PANDAS_HINT = "pip install 'lightlayers[pandas]'"


class RunError(ValueError):
    """A path is not a run folder, or a filter is invalid; the message says what to do."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """A trial's test predictions: ``probs[i, c]`` is the probability of ``classes[c]`` for the
    i-th test image, whose true class index is ``labels[i]``."""

    classes: tuple[str, ...]
    labels: np.ndarray  # int64 (N,)
    probs: np.ndarray  # float64 (N, C)

    @property
    def predicted(self) -> np.ndarray:
        """The class index of the highest probability per image (int64 (N,))."""
        return self.probs.argmax(axis=1)


@dataclass(frozen=True)
class Trial:
    """One trial (a model and a seed under a protocol) as the run folder records it.

    ``metrics``: every number recorded for the trial (accuracy, auc, params_total, ...; see
    ``lightlayers.metrics.registry``); a metric not recorded is absent, so a failed trial has
    few or none. ``settings``: what the trial trained with, the run's settings with the
    trial's own (``model_options``, and ``tuned`` for a tuned run) over them. ``history``: one
    dict per epoch (``epoch``, ``train_loss``, ``val_accuracy``, ...). ``predictions``: the
    test split's, None until the trial is done. ``checkpoint``: the selected weights (float32
    safetensors), None until done.
    """

    model: str
    seed: int
    protocol: str
    status: str  # pending, running, done or failed
    metrics: dict[str, Any]
    settings: dict[str, Any]
    history: list[dict[str, Any]]
    predictions: Predictions | None
    checkpoint: Path | None
    error: str | None = None
    attempts: int = 0
    confusion: list[list[int]] | None = None  # rows: true class, columns: predicted
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # model|seed|protocol|data, unique in the run folder
    # A study with training sizes (train_sizes): the size this trial trained on ("0.25", "50";
    # None: the whole training split) and its training images, where recorded.
    train_size: str | None = None
    train_images: int | None = None


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if status is None:
        return None
    wanted = (status,) if isinstance(status, str) else tuple(status)
    bad = [s for s in wanted if s not in _STATUSES]
    if bad:
        raise RunError(f"status {bad[0]!r} is not one of {', '.join(_STATUSES)}")
    return wanted


class Run:
    """A run folder (``lightlayers run --out DIR``), read from its ``results.db``.

    Open one with :func:`open_run`; :func:`run_study` returns one too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path).expanduser()
        if path.name == "results.db" and path.is_file():
            path = path.parent
        hint = f"run `lightlayers run --out {path}` (or lightlayers.run_study) first"
        if not path.is_dir():
            raise RunError(f"{path}: no such run folder; {hint}")
        if not (path / "results.db").is_file():
            raise RunError(f"{path} is not a run folder (it holds no results.db); {hint}")
        # Absolute: checkpoint paths stay valid when the caller changes directory.
        self.path = path.absolute()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def _store(self) -> Any:
        from lightlayers.runfolder.store import ResultsStore, StoreError

        try:
            return ResultsStore(self.path / "results.db", create=False, readonly=True)
        except StoreError as e:
            raise RunError(f"cannot read the results of {self.path}: {e}") from e

    @property
    def meta(self) -> dict[str, Any]:
        """What the run folder records about the study as a whole: ``settings``, ``config``,
        ``protocol`` (resolved), ``environment``, ``data`` (the dataset's summary), ..."""
        with self._store() as store:
            return store.meta()

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that change a trial's numbers, one value each in a run folder."""
        return dict(self.meta.get("settings") or {})

    @property
    def counts(self) -> dict[str, int]:
        """Trials per status: ``{"pending": 0, "running": 0, "done": 4, "failed": 0}``."""
        with self._store() as store:
            return store.counts()

    def trials(self, status: str | Iterable[str] | None = None,
               model: str | Iterable[str] | None = None) -> list[Trial]:
        """The trials in the study's order (models as listed, then seeds), as :class:`Trial`
        records; only those of ``status`` ("done", "failed", "pending", "running", or several)
        and of ``model`` (a name or several) when given."""
        wanted = _statuses(status)
        models = None if model is None else ({model} if isinstance(model, str) else set(model))
        with self._store() as store:
            meta = store.meta()
            rows = [r for r in store.trials()
                    if (wanted is None or r["status"] in wanted)
                    and (models is None or r["model"] in models)]
            return [self._trial(store, meta, r) for r in rows]

    def _trial(self, store: Any, meta: dict[str, Any], row: dict[str, Any]) -> Trial:
        import numpy as np

        metrics = {k: v for k, v in row.items() if k not in _TRIAL_FIELDS and v is not None}
        own = row.get("config") or {}
        settings = {**(meta.get("settings") or {}), **own}
        p = store.predictions(row["id"]) if row["status"] == "done" else None
        predictions = None if p is None else Predictions(
            tuple(p["classes"]), np.asarray(p["labels"]), np.asarray(p["probs"]))
        ckpt = row.get("checkpoint")
        extra = dict(row.get("extra") or {})
        size = own.get("train_size")
        return Trial(
            model=row["model"], seed=int(row["seed"]), protocol=row["protocol"],
            status=row["status"], metrics=metrics, settings=settings,
            history=store.history(row["id"]), predictions=predictions,
            checkpoint=None if not ckpt else self.path / ckpt,
            error=row.get("error"), attempts=int(row.get("attempts") or 0),
            confusion=row.get("confusion"), extra=extra, key=row["key"],
            train_size=None if size is None else str(size),
            train_images=(extra.get("train_set") or {}).get("images"))

    def columns(self, trials: list[Trial] | None = None) -> list[str]:
        """The columns of :meth:`table`: the trial (with ``train_size`` and ``train_images``
        when the study has training sizes), every registered trial metric in its declaration
        order (as ``results.csv``), any other metric recorded, then ``attempts``, ``error``,
        ``epochs`` (epochs recorded) and ``checkpoint``."""
        from lightlayers.metrics.registry import trial_metrics

        registered = [m.name for m in trial_metrics()]
        others = sorted({k for t in (trials or []) for k in t.metrics} - set(registered))
        # As results.csv: a study with training sizes says each trial's after its protocol.
        sized = ["train_size", "train_images"] if any(
            t.train_size for t in trials or []) else []
        return ["model", "seed", "protocol", *sized, "status", *registered, *others,
                "attempts", "error", "epochs", "checkpoint"]

    def table(self, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One dict per trial, every row with the same keys (:meth:`columns`); a value not
        recorded is None. Plain Python values, ready for ``csv.DictWriter`` or JSON."""
        return self._rows(self.trials(status))

    def _rows(self, trials: list[Trial]) -> list[dict[str, Any]]:
        cols = self.columns(trials)
        rows = []
        for t in trials:
            row = dict.fromkeys(cols)
            row.update(model=t.model, seed=t.seed, protocol=t.protocol, status=t.status,
                       attempts=t.attempts, error=t.error, epochs=len(t.history),
                       checkpoint=None if t.checkpoint is None else str(t.checkpoint))
            if "train_size" in row:
                row.update(train_size=t.train_size or "all", train_images=t.train_images)
            row.update({k: v for k, v in t.metrics.items() if k in row})
            rows.append(row)
        return rows

    def to_pandas(self, status: str | Iterable[str] | None = None) -> pandas.DataFrame:
        """:meth:`table` as a pandas DataFrame: one row per trial, one column per variable
        (needs pandas: ``pip install 'lightlayers[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(f"Run.to_pandas() needs pandas: {PANDAS_HINT}") from None
        from lightlayers.metrics.registry import trial_metrics

        trials = self.trials(status)
        df = pd.DataFrame.from_records(self._rows(trials), columns=self.columns(trials))
        # Each metric column by its registered type, so a column with missing values (a failed
        # trial, a metric not measured) stays numeric: NaN for floats, <NA> for ints and bools.
        nullable = {float: "float64", int: "Int64", bool: "boolean"}
        for m in trial_metrics():
            df[m.name] = df[m.name].astype(nullable[m.type])
        for name in ("seed", "attempts", "epochs"):
            df[name] = df[name].astype("int64")
        if "train_images" in df:
            df["train_images"] = df["train_images"].astype("Int64")
        return df

    def report(self, **options: Any) -> Path:
        """Write the run folder's report (``RUN/report/``, as ``lightlayers report``) and
        return the HTML page's path; ``options`` go to
        :func:`lightlayers.report.write_report` (e.g. ``formats=("csv", "md")``)."""
        from lightlayers.report import write_report

        options.setdefault("console", False)
        result = write_report(self.path, **options)
        return result.html if result.html is not None else result.out_dir


def open_run(path: str | os.PathLike[str]) -> Run:
    """The run folder at ``path`` (or its ``results.db``); :class:`RunError` when there is
    none."""
    return Run(path)


def run_study(config_or_path: StudyConfig | Mapping[str, Any] | str | os.PathLike[str] | None
              = None, /, *, progress: bool = False, **settings: Any) -> Run:
    """Train every pending trial of a study, as ``lightlayers run`` does, and return its
    :class:`Run`.

    ``config_or_path``: a study YAML file, a mapping of settings, a
    :class:`~lightlayers.config.StudyConfig`, or None; ``settings`` override it, with the
    names of the YAML (``data``, ``models``, ``seeds``, ``epochs``, ``size``, ``protocol``,
    ``protocol_overrides``, ``threads``, ``out``, ``report``, ...; ``lightlayers run --help``
    lists them). Without a ``protocol`` anywhere the study trains with ``improved``, as the
    command line. Done trials already in ``out`` are skipped, an interrupted one is redone.
    The report is written when ``report`` is true (the default), silently; ``progress=True``
    prints the command's progress on stderr.

    Raises :class:`lightlayers.config.ConfigError` (settings),
    :class:`lightlayers.data.DataError` (data) or
    :class:`lightlayers.runfolder.RunFolderError` (the run folder), each with a message naming
    what to fix. A failed trial does not raise: it is
    recorded (``Run.trials(status="failed")`` gives its error).
    """
    from lightlayers.commands.run import CLI_PROTOCOL
    from lightlayers.config import StudyConfig, load_config
    from lightlayers.study import run_study as _run

    path: str | os.PathLike[str] | None = None
    base: dict[str, Any] = {}
    if isinstance(config_or_path, StudyConfig):
        base = config_or_path.to_dict()
    elif isinstance(config_or_path, Mapping):
        base = dict(config_or_path)
    elif config_or_path is not None:
        path = config_or_path
    values = {**base, **settings}
    if "protocol" not in values and "tuned" not in values and not _yaml_sets(path):
        values["protocol"] = CLI_PROTOCOL
    cfg = load_config(None if path is None else os.fspath(path), **values)
    outcome = _run(cfg, progress=progress)
    run = Run(outcome.out_dir)
    if cfg.report and outcome.counts.get("done"):
        from lightlayers.report import ReportError

        try:
            run.report(progress=progress)
        except ReportError as e:
            # The trials are recorded already; a report problem must not hide the Run.
            warnings.warn(f"the report of {run.path} could not be written: {e}", stacklevel=2)
        else:
            if cfg.log and outcome.ran:  # the trackers got this run's trials: the report too
                from lightlayers.trackers import log_report

                log_report(cfg.log, cfg.to_dict(), run.path, run.path / "report")
    return run


def _yaml_sets(path: str | os.PathLike[str] | None) -> bool:
    from lightlayers.commands.run import _yaml_sets as sets

    return path is not None and sets(os.fspath(path), ("protocol", "tuned"))
