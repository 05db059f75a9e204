"""``lightlayers tune``: give every model of a study the same search for its training settings.

For each model, one Optuna study (seeded TPE sampler, median pruner on the per-epoch validation
objective) runs ``budget`` trials, each training at most the protocol's epochs on every fold of
the training images (train and val pooled, stratified, grouped by patient) and scoring the
objective on the fold held out. Test images are never loaded into a loader, scored or recorded.

Tuning folder: ``tune.db`` (Optuna's SQLite storage: every finished trial is kept, so a killed
tuning resumes where it stopped) and a ``lightlayers_tune`` table in it binding the folder to
its settings and data. ``lightlayers run --tuned DIR`` then trains each model with its best
settings (:mod:`lightlayers.tuned`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from lightlayers.config import DEFAULT_SEARCH, Protocol, StudyConfig
from lightlayers.schema import ConfigError, Space, at_least, check_value, setting, shown
from lightlayers.tuned import (
    _META_TABLE,
    DB,
    _augment_at,
    _fingerprint_hash,
    _num,
    _optuna,
    _storage,
    overrides_for,
    summary_table,
    tune_summary,
)

__all__ = ["OBJECTIVES", "TuneOptions", "fold_evaluations", "make_folds", "run_tune",
           "search_space", "summary_table", "tune_summary"]

# SQLite's side files: claimed as the folder's own so a link planted there is refused.
_DB_FILES = (DB, f"{DB}-journal", f"{DB}-wal", f"{DB}-shm")
OBJECTIVES: dict[str, str] = {"auc": "maximize", "accuracy": "maximize",
                              "balanced_accuracy": "maximize", "loss": "minimize"}


@dataclass(frozen=True)
class TuneOptions:
    """How much search each model gets, and what it is judged by."""

    budget: int = setting(20, "tuning trials per model, the same for every model (complete "
                          "plus pruned)", check=at_least(1))
    folds: int = setting(3, "validation folds of the training images, grouped by patient "
                         "(1: the study's own validation split)", check=at_least(1))
    objective: Literal["auc", "accuracy", "balanced_accuracy", "loss"] = setting(
        "auc", "validation metric averaged over the folds (loss is minimised)")
    seed: int = setting(0, "seed of the sampler and of every tuning fit")


# --- the search space ---------------------------------------------------------------------
def _declared() -> dict[str, Space | None]:
    return {f.name: f.metadata.get("search") for f in fields(Protocol)}


def _tunable() -> str:
    return ", ".join(n for n, s in _declared().items() if s is not None)


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _bound_problem(name: str, value: Any) -> str | None:
    """What the setting's own rule says of ``value`` as a bound of its range, or None."""
    if name == "augment":
        # A strength: the improved recipe's augmentation times it must still be valid.
        if value < 0:
            return "must be >= 0"
        try:
            _augment_at(value)
        except ValueError as e:
            return str(e)
        return None
    try:
        check_value(Protocol, name, value, "")
    except ConfigError as e:
        return str(e).split(": ", 1)[-1]
    return None


def _narrowed(name: str, declared: Space, spec: Any) -> Space:
    where = f"search.{name}"
    if declared.kind == "choice":
        if not isinstance(spec, list | tuple) or not spec:
            raise ConfigError(f"{where}: expected a list of values to try, e.g. "
                              f"{list(declared.choices)}, got {shown(spec)}")
        for v in spec:
            problem = _bound_problem(name, v)
            if problem:
                raise ConfigError(f"{where}: {shown(v)} breaks the setting's rule ({problem})")
        return Space("choice", choices=tuple(spec))
    log = declared.log
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: expected {{low: X, high: Y, log: true|false}}, got "
                              f"{shown(spec)}")
        low, high, log = spec["low"], spec["high"], spec.get("log", log)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {shown(log)}")
    elif isinstance(spec, list | tuple) and len(spec) == 2:
        low, high = spec
    else:
        raise ConfigError(f"{where}: expected [LOW, HIGH] (declared {declared.describe()}), "
                          f"got {shown(spec)}")
    if not (_finite_number(low) and _finite_number(high)):
        raise ConfigError(f"{where}: LOW and HIGH must be finite numbers, got {shown(spec)}")
    if declared.kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: {name} is a whole number, got {shown(spec)}")
    if not low < high:
        raise ConfigError(f"{where}: LOW must be below HIGH, got {shown(spec)}")
    for v in (low, high):
        problem = _bound_problem(name, v)
        if problem:
            raise ConfigError(f"{where}: {shown(v)} breaks the setting's rule ({problem})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs LOW > 0, got {shown(low)}")
    return Space(declared.kind, low, high, log=log)


def search_space(cfg: StudyConfig) -> dict[str, Space]:
    """The settings tuned, each with its range: the protocol's default search
    (:data:`lightlayers.config.DEFAULT_SEARCH`) narrowed or widened by ``cfg.search``."""
    declared = _declared()
    space = {n: declared[n] for n in DEFAULT_SEARCH[cfg.protocol]}
    for key, spec in cfg.search.items():
        if not isinstance(key, str) or key not in declared:
            raise ConfigError(f"search.{shown(key, 40, quote=False)}: not a protocol setting; "
                              f"tunable settings: {_tunable()}")
        own = declared[key]
        if own is None:
            raise ConfigError(f"search.{key}: {key} cannot be tuned (set it with --set or "
                              f"protocol_overrides); tunable settings: {_tunable()}")
        if spec is None or spec is False:
            space.pop(key, None)
            continue
        space[key] = _narrowed(key, own, spec)
    if not space:
        raise ConfigError("search: every setting was left out, so there is nothing to tune; "
                          f"give at least one of {_tunable()}")
    return {k: s for k, s in space.items() if s is not None}


def _suggest(trial: Any, space: dict[str, Space]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, s in space.items():
        if s.kind == "choice":
            params[name] = trial.suggest_categorical(name, list(s.choices))
        elif s.kind == "int":
            params[name] = trial.suggest_int(name, int(s.low or 0), int(s.high or 0), log=s.log)
        else:
            params[name] = trial.suggest_float(name, float(s.low or 0), float(s.high or 0),
                                               log=s.log)
    return params


# --- objective ----------------------------------------------------------------------------
def objective_value(objective: str, labels: np.ndarray, probs: np.ndarray, loss: float) -> float:
    """The objective of one validation pass. AUC: the mean one-vs-rest AUC over the classes
    present (for two classes, the ordinary AUC)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if objective == "loss":
        return float(loss)
    if objective == "accuracy":
        return float((probs.argmax(1) == labels).mean())
    if objective == "balanced_accuracy":
        return float(balanced_accuracy_score(labels, probs.argmax(1)))
    present = [c for c in np.unique(labels) if 0 < (labels == c).sum() < len(labels)]
    if not present:
        return math.nan
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


# --- folds --------------------------------------------------------------------------------
def _digests(images: np.ndarray) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(im.tobytes(), digest_size=7).digest(),
                                    "little") for im in images], np.int64)


def make_folds(ds: Any, folds: int, seed: int) -> list[tuple[Any, Any]]:
    """(train, held-out) Splits: ``folds`` stratified folds of the train and val images pooled,
    every patient (and every set of identical images) inside one fold; 1: the study's own."""
    from sklearn.model_selection import StratifiedGroupKFold

    from lightlayers.data.dataset import Split
    from lightlayers.data.splits import group_images, patient_ids

    tr, va = ds.splits["train"], ds.splits["val"]
    if folds == 1:
        return [(tr, va)]
    images = np.concatenate([tr.images, va.images])
    labels = np.concatenate([tr.labels, va.labels])
    ids = None if tr.ids is None or va.ids is None else [*tr.ids, *va.ids]
    pattern = ds.identity.get("options", {}).get("patient_pattern")
    patients = patient_ids(ids, pattern) if ids is not None and pattern else None
    groups = group_images(patients, _digests(images))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ConfigError(f"folds: {folds} folds need at least {folds} patients or images, "
                          f"the training images hold {n_groups}; use fewer --folds")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)

    def part(idx: np.ndarray) -> Split:
        return Split(images=images[idx], labels=labels[idx],
                     ids=None if ids is None else tuple(ids[i] for i in idx))

    import warnings

    with warnings.catch_warnings():
        # A class with fewer patients than folds is still split as evenly as it can be.
        warnings.simplefilter("ignore", UserWarning)
        pairs = list(cv.split(np.zeros(len(labels)), labels, groups))
    return [(part(np.sort(a)), part(np.sort(b))) for a, b in pairs]


# --- one fit ------------------------------------------------------------------------------
class _Pruned(Exception):
    pass


def _fit_fold(name: str, cfg: StudyConfig, protocol: Protocol, ds: Any, train: Any, held: Any,
              device: Any, seed: int, weights: Any, objective: str,
              on_epoch: Callable[[int, float], None], fold_id: str) -> float:
    """Train ``name`` on ``train`` and return the objective on ``held``: what a study's trial
    does up to its selected weights, without a test loader. ``fold_id`` names the fold's
    images, so a frozen backbone's features are computed once per fold, not once per trial."""
    ev = _fold_eval(name, cfg, protocol, ds, train, held, device, seed, weights, objective,
                    on_epoch, fold_id)
    return objective_value(objective, ev.labels, ev.probs, ev.loss)


def _fold_eval(name: str, cfg: StudyConfig, protocol: Protocol, ds: Any, train: Any, held: Any,
               device: Any, seed: int, weights: Any, objective: str,
               on_epoch: Callable[[int, float], None], fold_id: str) -> Any:
    """:func:`_fit_fold`'s held-out evaluation itself (labels, probabilities, loss), averaged
    over ``protocol.tta`` augmented views as a study's test split would be."""
    from lightlayers.data import DeviceLoader
    from lightlayers.decisions import NotApplicable
    from lightlayers.models import create_model
    from lightlayers.runtime import seed_everything
    from lightlayers.train import TensorLoader, amp_in_use, evaluate, fit
    from lightlayers.trial import (
        _loader_options,
        _model_in_chans,
        _with_tta,
        apply_protocol,
        input_sizes,
        model_kwargs,
        takes_weights,
    )

    seed_everything(seed)
    kwargs = model_kwargs(cfg, name)
    if weights is not None:
        kwargs["weights"] = weights
    elif takes_weights(name):
        from lightlayers.models.transfer import resolve_model_weights

        kwargs["weights"] = resolve_model_weights(name, kwargs["weights"], download=False)
    model = create_model(name, num_classes=ds.num_classes,
                         in_chans=cfg.in_chans or _model_in_chans(name, ds.in_chans), **kwargs)
    apply_protocol(model, protocol)
    model.to(device)
    lo = _loader_options(model, ds.in_chans, ds.image_size, input_sizes(cfg, name)[1])
    aug = protocol.augment if protocol.augment.enabled else None
    bs = protocol.batch_size
    train_ld: Any = DeviceLoader(train, bs, device, shuffle=True, seed=seed, augment=aug, **lo)
    held_ld: Any = DeviceLoader(held, bs, device, **lo)
    if protocol.tta and aug is None:
        raise NotApplicable("the tuned recipe does not augment, and its views are augmented")
    if protocol.tta and model.frozen:
        raise NotApplicable("a frozen backbone trains on cached features, which cannot be "
                            "augmented")
    amp = amp_in_use(device, protocol)
    trainee = model
    if model.frozen and aug is None:
        # As a study's trial does: the frozen backbone's features once, then the head trains
        # on them (the disk cache serves every later trial of this fold).
        from lightlayers.features import cached_features, feature_key

        key = feature_key(fold_id, name, json.dumps(model.weights_info(), sort_keys=True),
                          ds.image_size, lo, amp)
        feats, _, _ = cached_features(key, cast(Any, model).backbone,
                                      {"train": train_ld, "val": held_ld}, device,
                                      amp is not None)
        trainee = model.feature_head()
        train_ld = TensorLoader(*feats["train"], bs, shuffle=True, seed=seed)
        held_ld = TensorLoader(*feats["val"], bs)

    def score(ev: Any) -> dict[str, float]:
        return {"objective": objective_value(objective, ev.labels, ev.probs, ev.loss)}

    result = fit(trainee, train_ld, held_ld, protocol, device,
                 train_labels=np.asarray(train.labels), num_classes=ds.num_classes,
                 positive_class=ds.positive_class,
                 on_epoch=lambda row: on_epoch(row["epoch"], row["objective"]), score=score)
    # Scored in the precision training used ("amp: auto" on the CPU decides by timing in fit).
    ev = evaluate(trainee, held_ld, device, result.amp is not None)
    if protocol.tta:
        ev = _with_tta(ev, model, held, protocol.tta, bs, device, aug, lo, result.amp is not None)
    return ev


# --- the folder ---------------------------------------------------------------------------
class _Meta:
    """The folder's binding, in its own table of tune.db."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, timeout=30)
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {_META_TABLE} "
                         "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.con.commit()

    def get(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in
                self.con.execute(f"SELECT key, value FROM {_META_TABLE}")}

    def set(self, **items: Any) -> None:
        with self.con:
            self.con.executemany(f"INSERT OR REPLACE INTO {_META_TABLE} VALUES (?, ?)",
                                 [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()])

    def close(self) -> None:
        self.con.close()


def _bound_settings(cfg: StudyConfig, opts: TuneOptions) -> dict[str, Any]:
    from lightlayers.config import comparable_settings as _settings

    s = _settings(cfg)
    for k in ("tuned", "model_protocols"):
        s.pop(k, None)
    return {**s, **dataclasses.asdict(opts)}


@dataclass
class TuneOutcome:
    folder: Path
    models: list[dict[str, Any]]


def run_tune(cfg: StudyConfig, opts: TuneOptions, progress: bool = True,
             log: Callable[[str], None] | None = None, decide: bool = False) -> TuneOutcome:
    """Tune every model of ``cfg`` into the folder ``cfg.out``; finished trials there are kept
    and only the missing ones run. ``decide``: then make each model's decisions on the same
    folds (:mod:`lightlayers.decisions`), for the models not decided yet."""
    import torch

    from lightlayers.data import load_dataset
    from lightlayers.outputs import OutputFolder
    from lightlayers.runfolder.settings import local_inputs
    from lightlayers.runtime import resolve_device, resolve_threads
    from lightlayers.trial import data_size_for, resolve_study_weights

    say = log or (lambda msg: print(msg, file=sys.stderr) if progress else None)
    if cfg.tuned is not None or cfg.model_protocols:
        raise ConfigError("tuned / model_protocols: tuning searches from the protocol's own "
                          "settings; drop them (they are for `lightlayers run`)")
    if cfg.executor not in ("local", "ray"):
        raise ConfigError(f"executor: lightlayers tune runs its trials here or on Ray; drop "
                          f"--executor {cfg.executor}")
    protocol = cfg.resolved_protocol()
    if protocol.teacher is not None:
        raise ConfigError("teacher: distillation is not tuned; drop the teacher setting")
    space = search_space(cfg)
    optuna = _optuna()
    cfg = resolve_threads(cfg)
    torch.set_num_threads(cfg.threads or 1)  # resolve_threads set it
    device = resolve_device(cfg.device)
    out = Path(cfg.out).expanduser().absolute()
    folder = OutputFolder(out, "tune", inputs=local_inputs(cfg), what="tuning folder (--out)")
    try:
        for name in _DB_FILES:
            folder.claim(name)
        storage = _storage(out)  # creates Optuna's tables first
        meta = _Meta(out / DB)
        ray_trials = _RayTrials(cfg, protocol, out, say) if cfg.executor == "ray" else None
        try:
            return _tune(cfg, opts, protocol, space, optuna, storage, meta, device, out, say,
                         progress, load_dataset, data_size_for, resolve_study_weights,
                         ray_trials, decide)
        finally:
            if ray_trials is not None:
                ray_trials.close()
            meta.close()
            storage.engine.dispose()
    finally:
        folder.close()


def _tune(cfg: StudyConfig, opts: TuneOptions, protocol: Protocol, space: dict[str, Space],
          optuna: Any, storage: Any, meta: _Meta, device: Any, out: Path,
          say: Callable[[str], None], progress: bool, load_dataset: Any, data_size_for: Any,
          resolve_study_weights: Any, ray_trials: _RayTrials | None,
          decide: bool = False) -> TuneOutcome:
    from optuna.trial import TrialState

    settings = _bound_settings(cfg, opts)
    recorded = meta.get()
    if recorded.get("settings") is not None and recorded["settings"] != settings:
        old = recorded["settings"]
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ConfigError(f"{out} holds a tuning with other settings ({', '.join(diff)} "
                          "differ); use another --out folder, or the same settings to resume it")
    weights, errors = resolve_study_weights(cfg, say, progress)
    if errors:
        model, why = next(iter(errors.items()))
        raise ConfigError(f"{model}: {why}")
    datasets: dict[int | None, Any] = {}
    for model in cfg.models:
        size = data_size_for(cfg, model)
        if size not in datasets:
            say(f"loading data {cfg.data}" + (f" at {size}px" if size else ""))
            ds = load_dataset(cfg.data, size=size, in_chans=cfg.in_chans, resize=cfg.resize,
                              val_fraction=cfg.val_fraction, seed=cfg.split_seed,
                              progress=progress, on_bad_image=cfg.on_bad_image,
                              allow_missing_classes=cfg.allow_missing_classes)
            now = _fingerprint_hash(ds)
            seen = recorded.get("data_fingerprint")
            if seen is not None and seen != now:
                raise ConfigError(f"{out} was tuned on other data: {cfg.data} differs from it "
                                  "(content, classes or split); tune it into a new folder with "
                                  "--out NEW_FOLDER")
            recorded["data_fingerprint"] = now
            datasets[size] = ds
    models = list(dict.fromkeys([*recorded.get("models", []), *cfg.models]))
    meta.set(settings=settings, data_fingerprint=recorded["data_fingerprint"], models=models,
             protocol=cfg.protocol, space={k: dataclasses.asdict(s) for k, s in space.items()})
    direction = OBJECTIVES[opts.objective]
    for model in cfg.models:
        ds = datasets[data_size_for(cfg, model)]
        folds = make_folds(ds, opts.folds, cfg.split_seed)
        existing = optuna.load_study(study_name=model, storage=storage) \
            if model in optuna.get_all_study_names(storage) else None
        left = existing.get_trials(deepcopy=False) if existing is not None else []
        # Seeded by how far the search got, so a resumed search draws new points, and every
        # model's search draws the same random start.
        sampler = optuna.samplers.TPESampler(seed=opts.seed * 1_000_003 + len(left))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
        study = optuna.create_study(study_name=model, storage=storage, direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        for t in left:
            if t.state == TrialState.RUNNING:
                # Left by a process that was killed: failed, and its point asked again.
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                study.enqueue_trial(t.params, skip_if_exists=False)
                say(f"{model}: trial {t.number} was interrupted; its settings are tried again")

        def counted(study: Any = study) -> int:
            return len(study.get_trials(deepcopy=False,
                                        states=(TrialState.COMPLETE, TrialState.PRUNED)))

        failures = 0

        def told(trial: Any, params: dict[str, Any], result: dict[str, Any],
                 study: Any = study, model: str = model) -> None:
            """Record one trial's outcome (this process is tune.db's only writer)."""
            nonlocal failures
            n = counted() + 1
            if "pruned" in result:
                study.tell(trial, state=TrialState.PRUNED)
                say(f"{model} trial {n}/{opts.budget}: pruned ({_params_text(params)})")
            elif "failure" in result:
                study.tell(trial, state=TrialState.FAIL)
                failures += 1
                say(f"{model} trial {n}/{opts.budget}: failed ({result['failure']})")
                if failures >= opts.budget:
                    raise ConfigError(
                        f"{model}: {failures} tuning trials failed (the last: "
                        f"{shown(result['failure'], 120, quote=False)}); narrow the search "
                        "(search: in the YAML)")
            else:
                trial.set_user_attr("fold_values", result["values"])
                study.tell(trial, result["value"])
                say(f"{model} trial {n}/{opts.budget}: {opts.objective} "
                    f"{result['value']:.4f} ({_params_text(params)})")

        if ray_trials is not None:
            ray_trials.search(study, model, ds, space, opts, counted, told, weights.get(model))
            continue
        while counted() < opts.budget:
            trial = study.ask()
            params = _suggest(trial, space)
            told(trial, params, _attempt(cfg, opts, protocol, ds, folds, model, params, trial,
                                         device, weights.get(model)))
    if decide:
        best = {m["model"]: m["best"] for m in tune_summary(out)["models"]}
        for model in cfg.models:
            ds = datasets[data_size_for(cfg, model)]
            _decide(cfg, opts, ds, model, best.get(model), device, weights.get(model), meta,
                    say)
    return TuneOutcome(out, tune_summary(out)["models"])


def fold_evaluations(cfg: StudyConfig, model: str, ds: Any, folds: list[tuple[Any, Any]],
                     device: Any, seed: int = 0, weights: Any = None,
                     extra: dict[str, Any] | None = None) -> list[Any]:
    """Each fold's held-out evaluation (labels, probabilities, loss) after training ``model``
    with ``cfg``'s protocol plus the protocol settings ``extra``, fold k seeded ``seed + k``:
    what a tuning trial trains, without its pruning. ``folds``: :func:`make_folds`. A setting
    the model or recipe cannot take raises :class:`lightlayers.decisions.NotApplicable`."""
    from lightlayers.config import merge_overrides
    from lightlayers.decisions import NotApplicable

    tried = dataclasses.replace(cfg, protocol_overrides=merge_overrides(
        cfg.protocol_overrides, extra or {}))
    try:
        proto = tried.resolved_protocol()
    except ConfigError as e:
        raise NotApplicable(str(e).splitlines()[0]) from e
    return [_fold_eval(model, tried, proto, ds, train, held, device, seed + k, weights, "auc",
                       lambda _e, _v: None, _fold_id(ds, len(folds), k, train, held))
            for k, (train, held) in enumerate(folds)]


def _decide(cfg: StudyConfig, opts: TuneOptions, ds: Any, model: str,
            best: dict[str, Any] | None, device: Any, weights: Any, meta: _Meta,
            say: Callable[[str], None]) -> None:
    """``model``'s decisions on the search's folds and fold seeds, recorded in the folder
    (once per best setting: a decided model is not decided again)."""
    from lightlayers.config import merge_overrides
    from lightlayers.decisions import NotApplicable, decide
    from lightlayers.train import TrialError

    if best is None:
        say(f"{model}: no finished tuning trial, so nothing to decide")
        return
    decided = meta.get().get("decisions") or {}
    if (decided.get(model) or {}).get("params") == best["params"]:
        return
    folds = make_folds(ds, opts.folds, cfg.split_seed)
    base = dataclasses.replace(cfg, protocol_overrides=merge_overrides(
        cfg.protocol_overrides, overrides_for(best["params"])))
    epochs = base.resolved_protocol().epochs

    def run(extra: dict[str, Any]) -> list[Any]:
        if "epochs" in extra and cfg.epochs is not None:
            raise NotApplicable("--epochs fixes the epochs of every trial")
        try:
            return fold_evaluations(base, model, ds, folds, device, opts.seed, weights, extra)
        except (TrialError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not extra:  # the base itself: its settings trained in the search
                raise ConfigError(f"{model}: its best tuned settings failed to train again on "
                                  f"the folds ({first}); nothing was decided for it") from e
            raise NotApplicable(f"training failed: {first}") from e

    def objective(ev: Any) -> float:
        value = objective_value(opts.objective, ev.labels, ev.probs, ev.loss)
        if not math.isfinite(value):
            raise ValueError(f"the {opts.objective} of a fold cannot be computed (a fold "
                             "holds one class only); use fewer --folds")
        return value

    say(f"{model}: deciding EMA, TTA, longer training and the threshold on "
        f"{len(folds)} fold(s)")
    decision = decide(run, objective, OBJECTIVES[opts.objective] == "maximize", epochs,
                      ds.positive_class, ds.num_classes, say)
    decision["params"] = best["params"]
    meta.set(decisions={**decided, model: decision})


def _attempt(cfg: StudyConfig, opts: TuneOptions, protocol: Protocol, ds: Any,
             folds: list[tuple[Any, Any]], model: str, params: dict[str, Any], trial: Any,
             device: Any, weights: Any) -> dict[str, Any]:
    """One trial's outcome: ``{"value", "values"}``, ``{"pruned"}`` or ``{"failure"}``."""
    from lightlayers.train import TrialError

    try:
        value, values = _run_trial(cfg, opts, protocol, ds, folds, model, params, trial,
                                   device, weights)
    except _Pruned:
        return {"pruned": True}
    except ConfigError:
        raise
    except (TrialError, ValueError, RuntimeError) as e:
        # A diverging setting (a non-finite loss) is a failed point, not the end.
        return {"failure": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return {"value": value, "values": values}


def _run_trial(cfg: StudyConfig, opts: TuneOptions, protocol: Protocol, ds: Any,
               folds: list[tuple[Any, Any]], model: str, params: dict[str, Any], trial: Any,
               device: Any, weights: Any) -> tuple[float, list[float]]:
    from lightlayers.config import merge_overrides

    tried = dataclasses.replace(
        cfg, protocol_overrides=merge_overrides(cfg.protocol_overrides, overrides_for(params)))
    proto = tried.resolved_protocol()
    values = []
    for k, (train, held) in enumerate(folds):
        def on_epoch(epoch: int, value: float, k: int = k) -> None:
            if not math.isfinite(value):
                return
            # One step per epoch of each fold, in the same fold order for every trial.
            trial.report(value, k * proto.epochs + epoch - 1)
            if trial.should_prune():
                raise _Pruned

        v = _fit_fold(model, tried, proto, ds, train, held, device, opts.seed + k, weights,
                      opts.objective, on_epoch, _fold_id(ds, len(folds), k, train, held))
        if not math.isfinite(v):
            raise ValueError(f"fold {k + 1}: the {opts.objective} cannot be computed (a "
                             "fold holds one class only); use fewer --folds")
        values.append(v)
    return float(np.mean(values)), values


# --- Ray ----------------------------------------------------------------------------------
class _Recorder:
    """What a Ray worker's trial reports: the per-epoch objective, kept for the driver (a
    worker cannot reach tune.db, so no trial is pruned on Ray)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.steps.append((step, value))

    def should_prune(self) -> bool:
        return False


def _ray_trial(cfg_values: dict[str, Any], ds: Any, model: str, params: dict[str, Any],
               opts_values: dict[str, Any], weights: Any) -> dict[str, Any]:
    """The body of one Ray task: one trial on every fold; its outcome, never an exception."""
    import torch

    from lightlayers.config import config_from_dict
    from lightlayers.runtime import resolve_device

    try:
        cfg = config_from_dict(cfg_values)
        torch.set_num_threads(cfg.threads or 1)
        opts = TuneOptions(**opts_values)
        rec = _Recorder()
        out = _attempt(cfg, opts, cfg.resolved_protocol(), ds,
                       make_folds(ds, opts.folds, cfg.split_seed), model, params, rec,
                       resolve_device(cfg.device), weights)
    except Exception as e:  # the driver records it as a failed trial
        return {"failure": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return {**out, "steps": rec.steps}


class _RayTrials:
    """Trials as Ray tasks on a local Ray instance or a cluster (the ray executor's settings):
    this process asks Optuna for each trial's settings and tells it every outcome, as many in
    flight as the cluster has room for."""

    def __init__(self, cfg: StudyConfig, protocol: Protocol, out: Path,
                 say: Callable[[str], None]) -> None:
        from lightlayers.executors.ray import RayExecutor

        self.executor = RayExecutor(cfg, protocol, out)
        self.ray = self.executor.ray
        self.cfg, self.say = self.executor.cfg, say
        self.started = self.executor._connect()
        self.slots = self.executor._slots(self.started)
        o = self.executor.opts
        self.task = self.ray.remote(_ray_trial).options(
            num_cpus=o.cpus_per_trial or self.cfg.threads or 1, num_gpus=o.gpus_per_trial,
            max_retries=o.max_retries)
        self.pending: dict[Any, tuple[Any, dict[str, Any]]] = {}

    def search(self, study: Any, model: str, ds: Any, space: dict[str, Space],
               opts: TuneOptions, counted: Callable[[], int],
               told: Callable[[Any, dict[str, Any], dict[str, Any]], None],
               weights: Any) -> None:
        data = self.ray.put(ds)
        values = self.cfg.to_dict()
        while True:
            while len(self.pending) < self.slots and \
                    counted() + len(self.pending) < opts.budget:
                trial = study.ask()
                params = _suggest(trial, space)
                ref = self.task.remote(values, data, model, params, dataclasses.asdict(opts),
                                       weights)
                self.pending[ref] = (trial, params)
            if not self.pending:
                return
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            trial, params = self.pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as e:  # the worker or its node died beyond max_retries
                result = {"failure": f"{type(e).__name__} on Ray"}
            for step, value in result.pop("steps", []):
                trial.report(value, step)
            told(trial, params, result)

    def close(self) -> None:
        # Trials still in flight (Ctrl-C) stay RUNNING in tune.db: the next run asks them again.
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


def _fold_id(ds: Any, folds: int, k: int, train: Any, held: Any) -> str:
    from lightlayers.fingerprint import _members_digest, data_key

    return (f"{data_key(ds)}|tune fold {k + 1}/{folds}|{_members_digest(train)}|"
            f"{_members_digest(held)}")


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in params.items())
