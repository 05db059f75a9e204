"""Experiment trackers: where a study's trials are logged besides its own record, by name.

Each tracker is one module with a ``create(ctx)`` factory (a :class:`StudyContext` in, a
:class:`Tracker` out), registered by name with :func:`register_tracker` together with the
modules it needs and the extra that installs them. ``mlflow`` logs each trial as an MLflow run
(``pip install 'lightlayers[mlflow]'``); ``tensorboard`` writes event files
(``pip install 'lightlayers[tensorboard]'``). A tracker's module is imported only when it is
used. Trackers of other packages register through the ``lightlayers.trackers`` entry point
group (a callable that calls :func:`register_tracker`). See docs/trackers.md.

A tracker never breaks a study: its errors become one warning each, and the study goes on
without it; the results store stays the record.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightlayers.trackers.base import StudyContext, Tracker, TrialRecord, number

if TYPE_CHECKING:
    from lightlayers.trial_result import TrialResult

Factory = Callable[[StudyContext], Tracker]


class TrackerWarning(UserWarning):
    """A tracker failed; the study goes on without it."""


@dataclass(frozen=True)
class TrackerInfo:
    """A registered tracker.

    ``factory``: a callable, or ``"module:function"`` imported when the tracker is first used.
    ``requires``: the modules it imports, checked before the study starts; ``install``: the
    command that installs them, said when one is missing.
    """

    name: str
    factory: Factory | str
    help: str
    requires: tuple[str, ...] = ()
    install: str = ""

    def load(self) -> Factory:
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def missing(self) -> str | None:
        """The first required module that is not installed, or None."""
        for module in self.requires:
            try:
                if importlib.util.find_spec(module) is None:
                    return module
            except (ImportError, ValueError):
                return module
        return None


TRACKERS: dict[str, TrackerInfo] = {}


def register_tracker(info: TrackerInfo) -> TrackerInfo:
    """Make ``info.name`` a valid ``log`` entry (YAML ``log: [name]``, ``--log name``)."""
    if info.name in TRACKERS and TRACKERS[info.name] != info:
        raise ValueError(f"tracker {info.name!r} is registered already")
    TRACKERS[info.name] = info
    return info


def tracker_info(name: str) -> TrackerInfo:
    if not isinstance(name, str):
        raise ValueError(f"a tracker is named by text, got {type(name).__name__}; "
                         f"registered: {', '.join(sorted(TRACKERS))}")
    if name not in TRACKERS:
        load_plugins()
    try:
        return TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; registered: "
                         f"{', '.join(sorted(TRACKERS))}") from None


def check_trackers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse, before any trial trains, a tracker whose package is not installed: the user
    asked for the logs, and a study of hours must not end without them."""
    from lightlayers.schema import ConfigError

    for name in names:
        info = tracker_info(name)
        module = info.missing()
        if module is not None:
            how = f"; install it with: {info.install}" if info.install else ""
            raise ConfigError(f"log: {name} needs the {module} package, which is not "
                              f"installed{how}")


register_tracker(TrackerInfo(
    "mlflow", "lightlayers.trackers.mlflow:create",
    "one MLflow run per trial: settings, per-epoch and test metrics, checkpoint "
    "(RUN/mlruns unless MLFLOW_TRACKING_URI is set)",
    requires=("mlflow", "sqlalchemy", "alembic"), install="pip install 'lightlayers[mlflow]'"))
register_tracker(TrackerInfo(
    "tensorboard", "lightlayers.trackers.tensorboard:create",
    "TensorBoard event files per trial in RUN/tensorboard/",
    requires=("tensorboard",), install="pip install 'lightlayers[tensorboard]'"))


def load_plugins() -> None:
    """Register the trackers other installed packages declare (entry point group
    ``lightlayers.trackers``), once."""
    from lightlayers.plugins import load_entry_points

    load_entry_points("lightlayers.trackers", "tracker", TrackerWarning)


def _one_line(e: BaseException) -> str:
    """The error's type and first line, cut: a library's message may run to a paragraph."""
    from lightlayers.schema import shown

    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {shown(lines[0], 160, quote=False)}" if lines \
        else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The trackers' libraries' own warnings and INFO logging (schema migrations, deprecations)
    kept off the study's output: what matters of them is said once, as a TrackerWarning."""
    import logging

    # Not a logger's level: importing mlflow sets its own loggers' levels again.
    before = logging.root.manager.disable
    logging.disable(max(before, logging.INFO))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


class TrackerSet:
    """The study's trackers, opened when the first trial is logged (a study with nothing to
    train writes nothing), each dropped with one warning at its first error."""

    def __init__(self, names: tuple[str, ...] | list[str], ctx: StudyContext) -> None:
        self.ctx = ctx
        self._pending = [tracker_info(n) for n in dict.fromkeys(names)]
        self._open: dict[str, Tracker] = {}
        self.logged = 0

    def __bool__(self) -> bool:
        return bool(self._pending or self._open)

    def _fail(self, name: str, what: str, e: BaseException) -> None:
        warnings.warn(f"--log {name} failed {what} ({_one_line(e)}); the study goes on "
                      f"without {name}, its results are in {self.ctx.run_dir / 'results.db'}",
                      TrackerWarning, stacklevel=3)

    def _start(self) -> None:
        for info in self._pending:
            try:
                with _quiet():
                    tracker = info.load()(self.ctx)
                if not isinstance(tracker, Tracker):
                    raise TypeError(f"{type(tracker).__name__} has no log_trial(trial) or "
                                    "close() (see lightlayers.trackers.base.Tracker)")
            except Exception as e:
                self._fail(info.name, "to start", e)
                continue
            self._open[info.name] = tracker
        self._pending = []

    def log_trial(self, trial: TrialRecord) -> None:
        if self._pending:
            self._start()
        for name, tracker in list(self._open.items()):
            try:
                with _quiet():
                    tracker.log_trial(trial)
            except Exception as e:
                self._fail(name, f"to log {trial.name}", e)
                self._close_one(name, tracker, warn=False)
        self.logged += 1

    def trial_done(self, spec: Any, key: str, res: TrialResult) -> None:
        """Log a trial the study has just recorded as done (``res``: what
        :func:`lightlayers.trial.run_trial` returned)."""
        if not self:
            return
        try:
            trial = trial_record(spec, key, res, self.ctx.run_dir, self.ctx.config)
        except Exception as e:
            for name in [*self._open, *(i.name for i in self._pending)]:
                self._fail(name, f"to log {spec.model} seed {spec.seed}", e)
            self._open, self._pending = {}, []
            return
        self.log_trial(trial)

    def log_report(self, report_dir: Path) -> None:
        """The study's report to every tracker that keeps files (a ``log_report`` method)."""
        if self._pending:
            self._start()
        for name, tracker in list(self._open.items()):
            if not hasattr(tracker, "log_report"):
                continue
            try:
                with _quiet():
                    tracker.log_report(report_dir)
            except Exception as e:
                self._fail(name, "to log the report", e)
                self._close_one(name, tracker, warn=False)

    def _close_one(self, name: str, tracker: Tracker, warn: bool = True) -> None:
        self._open.pop(name, None)
        try:
            with _quiet():
                tracker.close()
        except Exception as e:
            if warn:
                self._fail(name, "to close", e)

    def close(self) -> None:
        for name, tracker in list(self._open.items()):
            self._close_one(name, tracker)
        self._pending = []


def log_report(names: tuple[str, ...] | list[str], config: dict[str, Any], run_dir: Path,
               report_dir: Path) -> None:
    """After ``lightlayers run`` wrote the report: the trackers of ``names`` that keep files get
    it (an error is one warning, as during the study)."""
    if not names:
        return
    from lightlayers.outputs import OutputError, OutputFolder
    from lightlayers.runfolder.layout import adopt_run_folder

    try:
        folder = OutputFolder(run_dir, "run", adopt=adopt_run_folder, what="run folder")
    except (OutputError, OSError) as e:
        for name in dict.fromkeys(names):
            warnings.warn(f"--log {name} failed to log the report ({_one_line(e)})",
                          TrackerWarning, stacklevel=2)
        return
    with folder:
        trackers = TrackerSet(names, StudyContext(folder.path, config, folder.claim))
        try:
            trackers.log_report(report_dir)
        finally:
            trackers.close()


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested settings as one level of ``a.b.c`` keys; lists and None as text."""
    out: dict[str, str | int | float | bool] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, f"{key}."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


def _plain(obj: Any) -> Any:
    """``obj`` as JSON can hold it: arrays as lists, non-finite floats as text."""
    from lightlayers.commands._json import json_safe

    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return json_safe(obj)


def trial_record(spec: Any, key: str, res: TrialResult, run_dir: Path,
                 config: dict[str, Any]) -> TrialRecord:
    """What trackers log of a trial the study has just recorded as done (``res``: the trial's
    result as :func:`lightlayers.trial.run_trial` returns it)."""
    extra = res.extra
    params: dict[str, Any] = {
        "model": spec.model, "seed": spec.seed, "protocol": spec.protocol,
        "train_size": spec.train_size or "all", "data": config.get("data"),
        "image_size": extra.get("image_size"), "input_size": extra.get("input_size"),
        "in_chans": extra.get("in_chans"),
        "train_images": (extra.get("train_set") or {}).get("images"),
        "model_options": (config.get("model_options") or {}).get(spec.model, {}),
        "settings": extra.get("protocol") or {},
    }
    name = f"{spec.model} seed {spec.seed}" + (f" size {spec.train_size}"
                                               if spec.train_size else "")
    # A flag (collapsed) as 0/1, as results.csv writes it.
    metrics = {k: float(v) for k, v in res.metrics.items()
               if v is not None and number(int(v) if isinstance(v, bool) else v) is not None}
    ckpt = res.checkpoint
    files = {"checkpoint": run_dir / ckpt} if ckpt else {}
    record = _plain({"trial": key, "model": spec.model, "seed": spec.seed,
                        "protocol": spec.protocol, "train_size": spec.train_size,
                        "metrics": res.metrics, "confusion": res.confusion,
                        "history": res.history, "extra": extra,
                        "checkpoint": ckpt})
    return TrialRecord(key=key, name=name, model=spec.model, seed=spec.seed,
                       protocol=spec.protocol, train_size=spec.train_size,
                       params=flat_params({k: v for k, v in params.items() if v is not None}),
                       history=list(res.history), metrics=metrics, files=files,
                       record=record)


__all__ = ["TRACKERS", "StudyContext", "Tracker", "TrackerInfo", "TrackerSet",
           "TrackerWarning", "TrialRecord", "check_trackers", "flat_params", "load_plugins",
           "log_report",
           "register_tracker", "tracker_info", "trial_record"]
