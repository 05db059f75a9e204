"""Study configuration: YAML file + CLI flags -> one validated, frozen :class:`StudyConfig`."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from lightlayers.data.augment import AugmentConfig as Augment

PROTOCOLS = ("seed", "improved")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


@dataclass(frozen=True)
class Protocol:
    """How one model is trained. ``seed`` reproduces the study; ``improved`` is our recipe."""

    name: str = "seed"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adam"
    adam_eps: float = 1e-7  # Keras' default, used by the study
    weight_decay: float = 0.0
    backbone_lr_scale: float = 0.1  # fine-tuned backbone stages learn at lr x this
    light_l2: bool = True  # the reference's L2 penalty on LightConv2d kernels
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    class_weighting: bool = False
    dropout: float = 0.0
    # BatchNorm running-stat momentum (PyTorch convention); None keeps the model's (Keras' 0.01,
    # which needs ~500 steps before evaluation statistics are trustworthy).
    bn_momentum: float | None = None
    augment: Augment = field(default_factory=Augment)
    select: Literal["val_loss", "val_auc", "val_acc", "last"] = "val_loss"
    threshold: Literal["argmax", "val_youden"] = "argmax"
    amp: bool = True  # bf16 autocast on CUDA only; never on the CPU
    # Speed only (float rounding aside); each trial records what it ran with. "auto" picks what
    # was measured faster on the device (docs/performance.md). compile: torch.compile the
    # training step with this mode; memory_format: the layout of weights and batches.
    # Off by default: "auto" decides from timed steps, so two runs of one command could take
    # different paths and round differently; the same command must give the same numbers.
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = "off"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"


# The improved recipe; every ingredient can be switched off in the YAML's `protocol_overrides`.
IMPROVED = Protocol(
    name="improved",
    epochs=20,
    optimizer="adamw",
    weight_decay=5e-4,
    light_l2=False,
    schedule="cosine",
    warmup_epochs=2,
    label_smoothing=0.1,
    class_weighting=True,
    bn_momentum=0.1,
    augment=Augment(rotate_deg=7.0, translate=0.06, scale=0.08, brightness=0.1, contrast=0.1),
    select="val_auc",
)


# Image sides a study accepts: below 8 px no model of the zoo has a feature left; above 1024 px
# one decoded split of the chest X-rays alone would need over 5 GB.
MIN_SIZE, MAX_SIZE = 8, 1024


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs; trials are ``models x seeds`` under one protocol."""

    data: str = "pneumoniamnist"
    models: tuple[str, ...] = ("study-light-k1",)
    seeds: tuple[int, ...] = (0,)
    protocol: str = "seed"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    protocol_overrides: dict[str, Any] = field(default_factory=dict)
    size: int | None = None
    in_chans: int | None = None
    resize: Literal["stretch", "crop"] = "stretch"
    val_fraction: float = 0.1
    # Undecodable image files: "error" lists them and stops; "skip" leaves them out and lists
    # them in the run folder (skipped_images.csv) and the report.
    on_bad_image: Literal["error", "skip"] = "error"
    # Keep a dataset in which a class has no images in some split (an error by default).
    allow_missing_classes: bool = False
    split_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    # Transfer backbones' weights: None = each backbone's torchvision DEFAULT; a weights name,
    # 'none' or a local state dict file. Only for studies with a transfer model.
    weights: str | None = None
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-model image size, e.g. {transfer-inception_v3: 75}: the backbone's smallest input
    # while the small models train at `size`.
    sizes: dict[str, int] = field(default_factory=dict)
    out: str = "runs/study"
    report: bool = True
    # Where trials run: "local" (one after another in this process) or "ray" (one Ray task
    # each; see docs/ray.md). None of these change a trial's numbers, so a run folder can be
    # resumed with another executor.
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None starts a local Ray instance; "auto" or HOST:PORT joins
    gpus_per_trial: float = 0.0  # fractions (0.25) let several small models share one GPU
    # CPUs Ray reserves per trial. None: `threads` (see runtime.resolve_threads), so a Ray trial
    # runs with the torch thread count a local run uses and gives the same numbers.
    cpus_per_trial: int | None = None
    max_retries: int = 2  # resubmissions of a trial whose Ray worker or node died

    def resolved_protocol(self) -> Protocol:
        base = IMPROVED if self.protocol == "improved" else Protocol()
        if "name" in self.protocol_overrides:
            # The name keys the trials in the store: it follows `protocol`, never an override.
            raise ConfigError("protocol_overrides.name: set the protocol with `protocol:` "
                              "(--protocol seed|improved)")
        changes: dict[str, Any] = dict(self.protocol_overrides)
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) is not None:
                changes[key] = getattr(self, key)
        merged = {f.name: getattr(base, f.name) for f in fields(base)}
        augment = dataclasses.asdict(base.augment)
        aug_changes = changes.pop("augment", {})
        if not isinstance(aug_changes, dict):
            raise ConfigError(
                f"protocol_overrides.augment: expected a mapping, got {aug_changes!r}")
        augment.update(aug_changes)
        merged.update(changes)
        merged.pop("augment")
        proto = _build(Protocol, merged, "protocol_overrides")
        proto = dataclasses.replace(
            proto, augment=_build(Augment, augment, "protocol_overrides.augment"))
        _check(proto, "protocol")
        return proto

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"], d["seeds"] = list(self.models), list(self.seeds)
        return d


def _type_ok(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        (inner, _) = get_args(tp)
        return isinstance(value, tuple) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    out = {}
    for key, value in values.items():
        tp = hints[key]
        if get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, str) and (tp is float or float in get_args(tp)):
            # YAML 1.1 reads 1e-3 (no dot) as a string.
            with contextlib.suppress(ValueError):
                value = float(value)
        if not _type_ok(value, tp):
            raise ConfigError(f"{where}.{key}: expected {_describe(tp)}, got {value!r}")
        out[key] = value
    try:
        return cls(**out)
    except (TypeError, ValueError) as e:  # a dataclass's own range checks
        raise ConfigError(f"{where}: {e}") from None


def _check(proto: Protocol, where: str) -> None:
    checks = [
        (proto.epochs >= 1, "epochs must be >= 1"),
        (proto.batch_size >= 1, "batch_size must be >= 1"),
        (proto.lr > 0, "lr must be > 0"),
        (0 <= proto.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 <= proto.dropout < 1, "dropout must be in [0, 1)"),
        (proto.bn_momentum is None or 0 < proto.bn_momentum <= 1,
         "bn_momentum must be in (0, 1] or null"),
        (proto.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
        (proto.weight_decay >= 0, "weight_decay must be >= 0"),
        (proto.backbone_lr_scale > 0, "backbone_lr_scale must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{where}: {msg}")


def validate(cfg: StudyConfig) -> StudyConfig:
    if not cfg.models:
        raise ConfigError("models: give at least one model (see `lightlayers models`)")
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(cfg.models)) != len(cfg.models) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("models and seeds must not repeat")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    if cfg.size is not None and not MIN_SIZE <= cfg.size <= MAX_SIZE:
        raise ConfigError(f"size: must be {MIN_SIZE}..{MAX_SIZE} pixels, got {cfg.size}")
    if cfg.in_chans not in (None, 1, 3):
        raise ConfigError(f"in_chans: must be 1 or 3, got {cfg.in_chans}")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction: must be in (0, 1), got {cfg.val_fraction}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {cfg.threads}")
    _check_executor(cfg)
    from lightlayers.models import model_info

    for name in cfg.models:
        try:
            model_info(name)
        except ValueError as e:
            raise ConfigError(f"models: {e}") from None
    def known(field: str, name: str) -> None:
        # Entries for zoo models outside this run are fine (a YAML's sizes stay valid when
        # --models picks a subset); a name the zoo does not know is a typo.
        if not isinstance(name, str):
            raise ConfigError(f"{field}: model names must be text, got {name!r}")
        if name not in cfg.models:
            try:
                model_info(name)
            except ValueError as e:
                raise ConfigError(f"{field}: {e}") from None

    from lightlayers.models import check_options

    for name, opts in cfg.model_options.items():
        known("model_options", name)
        if not isinstance(opts, dict):
            raise ConfigError(f"model_options.{name}: expected a mapping, got {opts!r}")
        try:
            check_options(name, opts)
        except ValueError as e:
            raise ConfigError(f"model_options.{name}: {e}") from None
    if cfg.weights is not None and not any(
            model_info(m).extra.get("takes_weights") for m in cfg.models):
        raise ConfigError(
            f"weights: {cfg.weights!r} was given, but no model of this study takes pretrained "
            f"weights ({', '.join(cfg.models)}); drop --weights, or add a transfer-* model")
    for name, px in cfg.sizes.items():
        known("sizes", name)
        if not isinstance(px, int) or isinstance(px, bool) or not MIN_SIZE <= px <= MAX_SIZE:
            raise ConfigError(f"sizes.{name}: expected an int in {MIN_SIZE}..{MAX_SIZE} pixels, "
                              f"got {px!r}")
    cfg.resolved_protocol()
    return cfg


def _check_executor(cfg: StudyConfig) -> None:
    if cfg.gpus_per_trial < 0 or (cfg.gpus_per_trial > 1 and not cfg.gpus_per_trial.is_integer()):
        # Ray's own rule: a fraction of one GPU, or whole GPUs.
        raise ConfigError("gpus_per_trial: must be a fraction in [0, 1] or a whole number of "
                          f"GPUs, got {cfg.gpus_per_trial}")
    if cfg.cpus_per_trial is not None and cfg.cpus_per_trial < 1:
        raise ConfigError(f"cpus_per_trial: must be >= 1, got {cfg.cpus_per_trial}")
    if cfg.max_retries < 0:
        raise ConfigError(f"max_retries: must be >= 0, got {cfg.max_retries}")
    if cfg.executor == "local":
        if cfg.ray_address is not None:
            raise ConfigError("ray_address: only used with executor ray (--executor ray)")
        return
    if cfg.ray_address is not None and not cfg.ray_address.strip():
        raise ConfigError("ray_address: give 'auto', HOST:PORT or ray://HOST:PORT, or leave it "
                          "out to start a local Ray instance")
    # Ray hides the GPUs from a task that asks for none, so these could never work.
    if cfg.device == "cuda" and cfg.gpus_per_trial == 0:
        raise ConfigError("device cuda with executor ray needs gpus_per_trial > 0, e.g. "
                          "--gpus-per-trial 0.25")
    if cfg.device == "cpu" and cfg.gpus_per_trial > 0:
        raise ConfigError(f"gpus_per_trial {cfg.gpus_per_trial} with device cpu: the GPUs would "
                          "be reserved and never used; use --device auto or cuda")


def config_from_dict(values: dict[str, Any]) -> StudyConfig:
    """Rebuild and validate a config from :meth:`StudyConfig.to_dict` (how Ray workers get it)."""
    return validate(_build(StudyConfig, dict(values), "config"))


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``--set`` flags (``KEY=VALUE``, VALUE read as YAML; ``augment.KEY=VALUE`` too) as a
    ``protocol_overrides`` mapping, later flags winning."""
    import yaml

    out: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {text!r}: expected KEY=VALUE, e.g. --set class_weighting=false")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: the value is not valid YAML: {e}") from e
        head, dot, sub = key.partition(".")
        if dot:
            if head != "augment" or not sub:
                raise ConfigError(f"--set {text!r}: only augment.KEY may be dotted")
            key, value = "augment", {sub: value}
        out = merge_overrides(out, {key: value})
    return out


def merge_overrides(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``protocol_overrides`` ``base`` updated key by key with ``extra`` (augment merged too)."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if key == "augment" and isinstance(value, dict) and isinstance(old, dict):
            value = {**old, **value}
        merged[key] = value
    return merged


def load_config(path: str | Path | None = None, **overrides: Any) -> StudyConfig:
    """Read a YAML study file (optional) and apply ``overrides`` (None values are ignored)."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})"
                              ) from e
        except (yaml.YAMLError, ValueError) as e:  # PyYAML raises ValueError for bad !!int etc.
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        odd = [k for k in loaded if not isinstance(k, str)]
        if odd:
            raise ConfigError(f"{path}: setting names must be text, got {odd[0]!r}")
        values.update(loaded)
    extra_proto = overrides.pop("protocol_overrides", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if extra_proto:  # merged into the file's, the flags winning
        values["protocol_overrides"] = merge_overrides(values.get("protocol_overrides") or {},
                                                       extra_proto)
    where = str(path) if path is not None else "config"
    if isinstance(values.get("models"), str):
        values["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    return validate(_build(StudyConfig, values, where))
