"""A tuning folder read: its binding, each model's best settings (``lightlayers tune DIR``),
and what ``lightlayers run --tuned DIR`` trains each model with (:func:`apply_tuned`).

Kept apart from :mod:`lightlayers.tune`, which runs searches with the study's machinery: a
study reads tuned settings through this module only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.config import IMPROVED, StudyConfig
from lightlayers.data.augment import AugmentConfig
from lightlayers.schema import ConfigError, shown

__all__ = ["DB", "apply_tuned", "check_tuned_data", "overrides_for", "read_meta",
           "summary_table", "tune_summary", "tuned_record", "tuned_source"]

DB = "tune.db"
_META_TABLE = "lightlayers_tune"
INSTALL = "lightlayers tune needs optuna: pip install 'lightlayers[tune]'"
# The augmentation fields one strength scales (hflip is on or off, never scaled).
_AUG_SCALED = ("rotate_deg", "translate", "scale", "brightness", "contrast")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(INSTALL) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _augment_at(strength: float) -> AugmentConfig:
    ref = IMPROVED.augment
    return dataclasses.replace(ref, **{f: getattr(ref, f) * strength for f in _AUG_SCALED})


def overrides_for(params: dict[str, Any]) -> dict[str, Any]:
    """Protocol settings (``protocol_overrides`` form) for a trial's sampled ``params``."""
    out = dict(params)
    if "augment" in out:
        aug = _augment_at(float(out["augment"]))
        out["augment"] = {f: getattr(aug, f) for f in _AUG_SCALED}
    return out


def _fingerprint_hash(ds: Any) -> str:
    """The data fingerprint as one hash: the folder is bound to it without keeping the
    fingerprint's per-split details (test's membership digest among them) in tune.db."""
    from lightlayers.fingerprint import data_fingerprint

    text = json.dumps(data_fingerprint(ds), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_meta(folder: Path) -> dict[str, Any]:
    """A finished or partial tuning folder's binding; ConfigError when it is not one."""
    db = Path(folder) / DB
    if not db.is_file() or db.is_symlink():
        raise ConfigError(f"{folder} is not a tuning folder (no {DB}); give a folder "
                          "`lightlayers tune` wrote")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute(f"SELECT key, value FROM {_META_TABLE}").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{db} cannot be read as a tuning store ({e}); give a folder "
                          "`lightlayers tune` wrote") from None
    return {k: json.loads(v) for k, v in rows}


def _storage(folder: Path) -> Any:
    optuna = _optuna()
    return optuna.storages.RDBStorage(f"sqlite:///{folder / DB}",
                                      engine_kwargs={"connect_args": {"timeout": 30}})


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --- reading a tuning folder --------------------------------------------------------------
def tune_summary(folder: Path) -> dict[str, Any]:
    """What ``lightlayers tune --json`` prints: per model its trials (complete plus pruned),
    the best trial's settings and objective, the objective's spread over the folds, and the
    decisions made on the folds for those settings (``tune --decide``; None before)."""
    from optuna.trial import TrialState

    meta = read_meta(folder)
    optuna = _optuna()
    storage = _storage(Path(folder))
    try:
        names = set(optuna.get_all_study_names(storage))
        models = []
        for model in meta.get("models", []):
            if model not in names:
                continue
            study = optuna.load_study(study_name=model, storage=storage)
            trials = study.get_trials(deepcopy=False)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            pruned = sum(t.state == TrialState.PRUNED for t in trials)
            best = None
            decision = None
            if complete:
                b = study.best_trial
                values = b.user_attrs.get("fold_values") or [b.value]
                best = {"params": dict(b.params), "value": b.value,
                        "fold_values": values, "spread": float(np.std(values))}
                # Decisions hold for the settings they were made with.
                made = (meta.get("decisions") or {}).get(model)
                if made is not None and made.get("params") == best["params"]:
                    decision = made
            models.append({"model": model, "trials": len(complete) + pruned,
                           "complete": len(complete), "pruned": pruned, "best": best,
                           "decisions": decision})
    finally:
        storage.engine.dispose()
    s = meta.get("settings", {})
    return {"folder": str(folder), "budget": s.get("budget"), "folds": s.get("folds"),
            "objective": s.get("objective"), "protocol": meta.get("protocol"),
            "models": models}


def summary_table(summary: dict[str, Any], width: int = 80) -> str:
    """The tuning folder as text of at most ``width`` columns: per model its best value and
    spread over the folds, the trials run and pruned, then its best settings."""
    import textwrap

    lines = [f"{summary['folder']}",
             f"budget {summary['budget']} trials per model, "
             f"{summary['folds']} fold(s), objective {summary['objective']}, "
             f"protocol {summary['protocol']}",
             "",
             f"{'model':<28} {'value':>17} {'trials':>7} {'pruned':>7}"]
    for m in summary["models"]:
        best = m["best"]
        value = "n/a" if best is None else f"{best['value']:.4f} +- {best['spread']:.4f}"
        lines.append(f"{shown(m['model'], 28, quote=False):<28} {value:>17} "
                     f"{m['trials']:>7} {m['pruned']:>7}")
        if best is not None:
            text = "  ".join(f"{k} {_num(v)}" for k, v in best["params"].items())
            lines += textwrap.wrap(text, width=width, initial_indent="    ",
                                   subsequent_indent="    ", break_long_words=True)
        if m.get("decisions") is not None:
            from lightlayers.decisions import decisions_text

            lines += textwrap.wrap("decided on the folds: " + decisions_text(m["decisions"]),
                                   width=width, initial_indent="    ",
                                   subsequent_indent="      ", break_long_words=True)
    return "\n".join(textwrap.shorten(x, width, placeholder="...") if len(x) > width else x
                     for x in lines)


# --- a run with tuned settings ------------------------------------------------------------
def _best(folder: Path) -> dict[str, dict[str, Any]]:
    """Each tuned model's best trial, with ``decided``: the settings its decisions add."""
    from lightlayers.decisions import decided_settings

    summary = tune_summary(folder)
    return {m["model"]: {**m["best"], "decided": decided_settings(m.get("decisions")),
                         "decisions_made": m.get("decisions") is not None}
            for m in summary["models"] if m["best"] is not None}


def tuned_source(cfg: StudyConfig) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The tuning folder ``cfg.tuned`` read: (its description, each model's best params)."""
    folder = Path(str(cfg.tuned)).expanduser().absolute()
    meta = read_meta(folder)
    best = _best(folder)
    missing = [m for m in cfg.models if m not in best]
    if missing:
        raise ConfigError(f"tuned: {folder} holds no finished tuning of {', '.join(missing)}; "
                          f"tune it there (lightlayers tune --models {','.join(missing)} "
                          f"--out {folder}) or leave it out of --models")
    s = meta.get("settings", {})
    if s.get("protocol") != cfg.protocol:
        raise ConfigError(f"tuned: {folder} tuned protocol {s.get('protocol')}, this run uses "
                          f"{cfg.protocol}; use --protocol {s.get('protocol')}")
    source = {"folder": str(folder), "data_fingerprint": meta.get("data_fingerprint"),
              "budget": s.get("budget"), "folds": s.get("folds"),
              "objective": s.get("objective")}
    return source, {m: best[m] for m in cfg.models}


def apply_tuned(cfg: StudyConfig) -> StudyConfig:
    """``cfg`` with each model's best tuned settings as its ``model_protocols`` entry."""
    if cfg.tuned is None:
        return cfg
    if cfg.models == StudyConfig().models:
        # Models left at the default: the ones the folder tuned.
        tuned_models = list(_best(Path(str(cfg.tuned)).expanduser().absolute()))
        if tuned_models and cfg.models[0] not in tuned_models:
            cfg = dataclasses.replace(cfg, models=tuple(tuned_models))
    _, best = tuned_source(cfg)
    own = dict(cfg.model_protocols)
    for model, b in best.items():
        given = own.get(model, {})
        clash = sorted(set(given) & (set(b["params"]) | set(b["decided"])))
        if clash:
            raise ConfigError(f"model_protocols.{model}: {', '.join(clash)} also come(s) from "
                              f"the tuning folder {cfg.tuned}; set them in one place")
        own[model] = {**given, **overrides_for(b["params"]), **b["decided"]}
    from lightlayers.config import validate

    return validate(dataclasses.replace(cfg, model_protocols=own))


def tuned_record(cfg: StudyConfig, model: str) -> dict[str, Any] | None:
    """What a tuned run's trial records of where its settings came from (None: not tuned)."""
    if cfg.tuned is None:
        return None
    source, best = tuned_source(cfg)
    b = best[model]
    return {**source, "params": b["params"], "value": b["value"],
            "spread": b["spread"], "decided": b["decided"],
            "decisions_made": b["decisions_made"],
            "settings": {**overrides_for(b["params"]), **b["decided"]}}


def check_tuned_data(cfg: StudyConfig, ds: Any) -> None:
    """A tuned run's data must be the data its settings were tuned on."""
    if cfg.tuned is None:
        return
    folder = Path(str(cfg.tuned)).expanduser().absolute()
    if read_meta(folder).get("data_fingerprint") != _fingerprint_hash(ds):
        raise ConfigError(f"tuned: {folder} was tuned on other data than {cfg.data} (content, "
                          "classes or split); tune this data first (lightlayers tune)")
