"""Study configuration: YAML file + CLI flags -> one validated, frozen :class:`StudyConfig`.

Every setting is declared once, below, with :func:`lightlayers.schema.setting`: its default,
help text and rule. The YAML keys, the ``lightlayers run`` flags and validation are all made
from these declarations; an executor's own settings come with its registration
(:mod:`lightlayers.executors`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from lightlayers.data.augment import AugmentConfig as Augment
from lightlayers.data.preprocess import RESIZE_HELP, center_fractions
from lightlayers.schema import (
    ConfigError,
    above,
    at_least,
    build,
    check_all,
    log_range,
    not_blank,
    one_of,
    setting,
    shown,
    span,
    within,
)

__all__ = ["DEFAULT_SEARCH", "IMPROVED", "PROTOCOLS", "ConfigError", "Protocol", "StudyConfig",
           "comparable_settings", "config_from_dict", "load_config", "merge_overrides",
           "parse_overrides", "validate"]

PROTOCOLS = ("seed", "improved")


def _resize_rule(value: Any) -> str | None:
    try:
        center_fractions(str(value))
    except ValueError as e:
        return str(e)
    return None


def _teacher_rule(spec: Any) -> str | None:
    """A teacher's run folder must exist and its checkpoints be the files its trials wrote
    (everything else is checked when a trial loads them)."""
    from lightlayers.teacher import checkpoint_problem, parse_teacher

    if not str(spec).strip():
        return "must not be empty"
    run, _ = parse_teacher(str(spec))
    try:
        is_run = (run / "results.db").is_file()
    except OSError as e:  # a name too long for the file system, say
        return f"cannot be read as a run folder ({e.strerror})"
    if not is_run:
        return (f"{shown(str(run), quote=False)} is not a run folder (no results.db); give "
                "RUN_DIR[:MODEL] of a finished `lightlayers run`")
    return checkpoint_problem(str(spec))


@dataclass(frozen=True)
class Protocol:
    """How one model is trained. ``seed`` reproduces the study; ``improved`` is our recipe.
    Any setting can be changed with ``--set KEY=VALUE`` or the YAML's ``protocol_overrides``."""

    name: str = setting("seed", "the protocol's name (set with `protocol:`)")
    epochs: int = setting(20, "training epochs", check=at_least(1))
    batch_size: int = setting(64, "images per training step", check=at_least(1),
                              search=one_of(16, 32, 64, 128))
    lr: float = setting(1e-3, "learning rate", check=above(0), search=log_range(1e-4, 1e-2))
    optimizer: Literal["adam", "adamw"] = setting("adam", "adam or adamw (decoupled decay)")
    adam_eps: float = setting(1e-7, "Adam's epsilon (Keras' default, used by the study)",
                              check=above(0))
    weight_decay: float = setting(0.0, "weight decay", check=at_least(0),
                                  search=log_range(1e-6, 1e-2))
    backbone_lr_scale: float = setting(0.1, "fine-tuned backbone stages learn at lr x this",
                                       check=above(0))
    light_l2: bool = setting(True, "the reference's L2 penalty on LightConv2d kernels")
    schedule: Literal["constant", "cosine"] = setting("constant", "learning-rate schedule")
    warmup_epochs: int = setting(0, "linear warm-up epochs", check=at_least(0))
    label_smoothing: float = setting(0.0, "label smoothing", check=within(0, 1, high_open=True),
                                     search=span(0.0, 0.2))
    class_weighting: bool = setting(False, "weight the loss by inverse class frequency")
    dropout: float = setting(0.0, "dropout before the head", check=within(0, 1, high_open=True),
                             search=span(0.0, 0.5))
    # PyTorch convention; None keeps the model's (Keras' 0.01, which needs ~500 steps before
    # evaluation statistics are trustworthy).
    bn_momentum: float | None = setting(None, "BatchNorm running-statistics momentum",
                                        check=within(0, 1, low_open=True),
                                        search=log_range(0.01, 0.3))
    # Polyak/EMA averaging (torch.optim.swa_utils.AveragedModel): validation, selection and
    # test then judge the averaged weights, which move less from batch to batch.
    ema: float | None = setting(
        None, "exponential moving average of the weights (and BatchNorm statistics) with this "
        "decay per step, e.g. 0.999; validation, selection and test use the average",
        check=within(0, 1, low_open=True, high_open=True))
    # Knowledge distillation (lightlayers.teacher): soft targets from a finished run's models.
    teacher: str | None = setting(
        None, "distil from a finished run: RUN_DIR[:MODEL[+MODEL...]], every finished seed of "
        "those models averaged into one soft target per training batch", check=_teacher_rule)
    distill_temperature: float = setting(
        4.0, "softmax temperature of teacher and student in the distillation term",
        check=above(0))
    distill_weight: float = setting(
        0.5, "weight of the distillation term; the labels' cross-entropy gets 1 - this",
        check=within(0, 1))
    # Test-time augmentation: the test split's probabilities averaged over the image and
    # this many augmented views, drawn as training draws them (needs augmentation on).
    tta: int = setting(0, "average the test probabilities over the image and this many views "
                       "augmented as in training", check=at_least(0))
    # Tuned as one strength: the improved recipe's augmentation times the sampled factor
    # (lightlayers.tune), so one number moves rotation, shift, zoom and intensity together.
    augment: Augment = setting(factory=Augment, help="augmentation of training batches",
                               search=span(0.0, 2.0))
    select: Literal["val_loss", "val_auc", "val_acc", "last"] = setting(
        "val_loss", "which epoch's weights are kept (chosen on validation)")
    threshold: Literal["argmax", "val_youden"] = setting(
        "argmax", "binary decision threshold: argmax (0.5) or Youden's J on validation")
    # auto on a CPU with bf16 units times fp32/bf16 x contiguous/channels-last on a few
    # training steps and keeps the fastest (lightlayers.precision); fp32 on other CPUs.
    amp: bool | Literal["auto", "bf16"] = setting(
        True, "true: bf16 autocast on CUDA only, never on the CPU; false: fp32; bf16: bf16 "
        "autocast on CUDA and the CPU; auto: as true on CUDA, on the CPU the fastest of "
        "fp32/bf16 x contiguous/channels-last by timed steps (memory_format auto)")
    # Speed only (float rounding aside); each trial records what it ran with. "auto" picks what
    # was measured faster on the device (docs/performance.md). Off by default: "auto" decides
    # from timed steps, so two runs of one command could take different paths and round
    # differently; the same command must give the same numbers.
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = setting(
        "off", "torch.compile the training step with this mode")
    memory_format: Literal["auto", "channels_last", "contiguous"] = setting(
        "auto", "layout of weights and batches; auto: contiguous, or timed with amp: auto")


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

# What `lightlayers tune` searches unless the YAML's `search:` says otherwise: these settings
# over their declared ranges. The faithful protocol has no augmentation, smoothing or dropout,
# so its search keeps to the knobs the published recipe has.
DEFAULT_SEARCH: dict[str, tuple[str, ...]] = {
    "seed": ("lr", "batch_size", "weight_decay", "bn_momentum"),
    "improved": ("lr", "batch_size", "weight_decay", "label_smoothing", "dropout", "augment",
                 "bn_momentum"),
}


# Image sides a study accepts: below 8 px no model of the zoo has a feature left; above 1024 px
# one decoded split of the chest X-rays alone would need over 5 GB.
MIN_SIZE, MAX_SIZE = 8, 1024
SIZE_RULE = within(MIN_SIZE, MAX_SIZE, unit="pixels")


def _train_sizes_rule(sizes: Any) -> str | None:
    from lightlayers.data.subsets import parse_train_sizes

    try:
        parse_train_sizes(sizes)
    except ValueError as e:
        return str(e)
    return None


def _executor_rule(name: Any) -> str | None:
    from lightlayers.executors import EXECUTORS, executor_info

    try:
        executor_info(name)
    except ValueError:
        return f"must be one of {', '.join(sorted(EXECUTORS))}"
    return None


def _log_rule(names: Any) -> str | None:
    from lightlayers.trackers import TRACKERS, tracker_info

    for name in names:
        try:
            tracker_info(name)
        except ValueError:
            return f"{shown(name)} is not a tracker; one of {', '.join(sorted(TRACKERS))}"
    return None


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs; trials are ``models x seeds`` under one protocol."""

    data: str = setting("pneumoniamnist",
                        "dataset path or short name (see `lightlayers data list`)")
    models: tuple[str, ...] = setting(("study-light-k1",),
                                      "comma-separated model names (see `lightlayers models`)",
                                      metavar="NAME,...")
    seeds: tuple[int, ...] = setting((0,), "comma-separated seeds, e.g. 0,1,2", metavar="N,...")
    # A study dimension like seeds: each size is its own trials, on nested subsets of the
    # training split (lightlayers.data.subsets); validation and test stay whole.
    train_sizes: tuple[str, ...] = setting(
        (), "training-set sizes for a learning curve: fractions of the training split "
        "(0.1,0.25,1) or images per class (50,100,all), drawn by patient, nested; default: "
        "the whole split", check=_train_sizes_rule, metavar="SIZE,...")
    protocol: Literal["seed", "improved"] = setting(
        "seed", "seed: the published study's training; improved: our recipe")
    epochs: int | None = setting(None, "training epochs (default: the protocol's)",
                                 check=at_least(1))
    batch_size: int | None = setting(None, "batch size (default: the protocol's)",
                                     check=at_least(1))
    lr: float | None = setting(None, "learning rate (default: the protocol's)", check=above(0))
    protocol_overrides: dict[str, Any] = setting(
        factory=dict, flag=False,
        help="protocol settings to change (--set KEY=VALUE), e.g. {class_weighting: false}")
    # One model's protocol settings over protocol_overrides: how a tuned run gives each model
    # its own best settings (filled from `tuned`).
    model_protocols: dict[str, dict[str, Any]] = setting(
        factory=dict, flag=False,
        help="per-model protocol settings, e.g. {paper-conv: {lr: 0.003}}")
    tuned: str | None = setting(
        None, "train each model with its best settings from this `lightlayers tune` folder",
        check=not_blank, metavar="TUNE_DIR")
    search: dict[str, Any] = setting(
        factory=dict, flag=False,
        help="lightlayers tune: ranges to search per setting, e.g. {lr: [1e-4, 1e-2], "
        "dropout: null} (null leaves a setting out)")
    size: int | None = setting(None, "square image side in pixels (default: the data's own, "
                               "or a pretrained backbone's)", check=SIZE_RULE, metavar="PX")
    in_chans: Literal[1, 3] | None = setting(None, "image channels (default: the data's)")
    resize: str = setting("stretch", "how images become square: " + RESIZE_HELP,
                          check=_resize_rule)
    val_fraction: float = setting(
        0.1, "share of train held out for validation when the data has no val split",
        check=within(0, 1, low_open=True, high_open=True))
    on_bad_image: Literal["error", "skip"] = setting(
        "error", "undecodable image files: error lists them and stops; skip leaves them out "
        "and lists them in the run folder and the report")
    allow_missing_classes: bool = setting(
        False, "keep a dataset in which a class has no images in some split")
    split_seed: int = setting(0, "seed of the validation split drawn from train")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "where trials compute")
    threads: int | None = setting(None, "torch CPU threads (default: the physical cores "
                                  "that other processes leave free, at least 1; "
                                  "OMP_NUM_THREADS when set)",
                                  check=at_least(1))
    weights: str | None = setting(
        None, "transfer backbones: DEFAULT, a torchvision weights name, 'none', or a local "
        ".pth/.safetensors state dict (default: each backbone's DEFAULT)")
    model_options: dict[str, dict[str, Any]] = setting(
        factory=dict, flag=False, help="per-model constructor options, e.g. {study-light-k1: "
        "{k: 2}}")
    # E.g. {transfer-inception_v3: 75}: the backbone's smallest input while the small models
    # train at `size`.
    sizes: dict[str, int] = setting(factory=dict, flag=False, help="per-model image side")
    out: str = setting("runs/study", "run folder")
    report: bool = setting(True, "write the report at the end")
    # Recorded beside the trial's numbers, never changing them (lightlayers.deploy.bench).
    cam_min_side: int = setting(
        7, "Grad-CAM: the report draws the last layer whose map is at least N x N over the "
        "image, and says so in one line when none is", check=at_least(1), metavar="N")
    deployment: bool = setting(
        False, "export each trained model to ONNX (fp32 and int8) and time it with ONNX "
        "Runtime on the CPU beside PyTorch (about 5 s a small model; needs lightlayers[onnx])")
    # Where trials run (a registered executor, see lightlayers.executors). Where they run does
    # not change a trial's numbers, so a run folder can be resumed with another executor.
    executor: str = setting("local", "where trials run", check=_executor_rule)
    # The chosen executor's own settings, declared with its registration; in the YAML and on
    # the command line they are top-level keys and flags (ray_address, --gpus-per-trial, ...).
    executor_options: dict[str, Any] = setting(
        factory=dict, flag=False, help="the executor's own settings")
    # Copies of each trial's numbers in other tools (lightlayers.trackers); the results store
    # stays the record, so logging never changes a trial and a folder resumes with or without.
    log: tuple[str, ...] = setting(
        (), "experiment trackers that log each trial: mlflow, tensorboard (docs/trackers.md)",
        check=_log_rule, metavar="TRACKER,...")

    def resolved_protocol(self, model: str | None = None) -> Protocol:
        """The protocol with every override; with ``model``, that model's own
        (``model_protocols``) on top."""
        base = IMPROVED if self.protocol == "improved" else Protocol()
        own = self.model_protocols.get(model, {}) if model is not None else {}
        if "name" in self.protocol_overrides or "name" in own:
            # The name keys the trials in the store: it follows `protocol`, never an override.
            raise ConfigError("protocol_overrides.name: set the protocol with `protocol:` "
                              "(--protocol seed|improved)")
        changes: dict[str, Any] = merge_overrides(self.protocol_overrides, own)
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) is not None:
                changes[key] = getattr(self, key)
        merged = {f.name: getattr(base, f.name) for f in fields(base)}
        augment = dataclasses.asdict(base.augment)
        aug_changes = changes.pop("augment", {})
        if not isinstance(aug_changes, dict):
            raise ConfigError(
                f"protocol_overrides.augment: expected a mapping, got {shown(aug_changes)}")
        augment.update(aug_changes)
        merged.update(changes)
        merged.pop("augment")
        proto = build(Protocol, merged, "protocol_overrides")
        proto = dataclasses.replace(
            proto, augment=build(Augment, augment, "protocol_overrides.augment"))
        check_all(proto, "protocol")
        return proto

    def executor_settings(self) -> Any:
        """The executor's settings as its declared dataclass (defaults filled in), or None for
        an executor that declares none."""
        from lightlayers.executors import executor_info

        info = executor_info(self.executor)
        if info.options is None:
            return None
        return build(info.options, dict(self.executor_options), "config")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"], d["seeds"] = list(self.models), list(self.seeds)
        d["train_sizes"] = list(self.train_sizes)
        d["log"] = list(self.log)
        return d

    def train_size_plan(self) -> tuple[Any, ...]:
        """The study's training sizes (:class:`lightlayers.data.subsets.TrainSize`), in the
        order given; the whole training split alone when none are."""
        from lightlayers.data.subsets import FULL, parse_train_sizes

        return parse_train_sizes(self.train_sizes) if self.train_sizes else (FULL,)


# Settings that change a trial's numbers: a run folder holds one value of each. Where trials
# run is not one of them, so a study can be resumed with another executor; nor is the spelling
# of the data's path: the data is compared by content (data_fingerprint).
# Training sizes are a dimension of the study like seeds (each size keys its own trials).
SETTINGS_EXCLUDED = ("models", "seeds", "train_sizes", "out", "report", "cam_min_side",
                     "deployment", "device",
                     "threads", "executor", "executor_options", "data", "log",
                     # A tuned run's settings are its model_protocols (compared); where they
                     # were read is spelling, and the search ranges are tune's alone.
                     "tuned", "search")


def comparable_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The settings a run folder holds one value of (those that change a trial's numbers), as
    plain JSON values: what a rerun, a pooled report and the test ledger compare."""
    import json

    d = cfg.to_dict()
    for k in SETTINGS_EXCLUDED:
        d.pop(k, None)
    # Unset means each backbone's DEFAULT, which run folders written before recorded as such.
    d["weights"] = d.get("weights") or "DEFAULT"
    return json.loads(json.dumps(d, sort_keys=True))


def _route_executor_options(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Top-level keys that are an executor's settings (``ray_address: auto``) moved into
    ``executor_options``; a setting of an executor other than the chosen one is an error."""
    from lightlayers.executors import EXECUTORS, executor_info

    own = {f.name for f in fields(StudyConfig)}
    values = dict(values)
    opts = dict(values.get("executor_options") or {})
    if not isinstance(values.get("executor_options", {}), dict):
        raise ConfigError(f"{where}.executor_options: expected a mapping")
    owners: dict[str, str] = {}
    for info in EXECUTORS.values():
        for f in fields(info.options) if info.options is not None else ():
            owners.setdefault(f.name, info.name)
    for key in [k for k in values if k not in own and k in owners]:
        opts[key] = values.pop(key)
    name = values.get("executor", "local")
    try:
        info = executor_info(name)
    except ValueError:
        return values  # the executor setting's own rule names the choices
    declared = {f.name for f in fields(info.options)} if info.options is not None else set()
    for key in opts:
        if key not in declared:
            if key in owners:
                raise ConfigError(f"{key}: only used with executor {owners[key]} "
                                  f"(--executor {owners[key]})")
            raise ConfigError(f"{where}.executor_options: unknown key {shown(key)} for executor "
                              f"{name}; valid keys: {', '.join(sorted(declared)) or 'none'}")
    if info.options is not None:
        # Defaults filled in, so a run folder's config.yaml says what the executor used.
        values["executor_options"] = dataclasses.asdict(build(info.options, opts, where))
    return values


def _build_study(values: dict[str, Any], where: str) -> StudyConfig:
    values = _route_executor_options(values, where)
    if isinstance(values.get("models"), str):
        values["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    if isinstance(values.get("log"), str):  # `log: mlflow` in the YAML, one tracker
        values["log"] = [t.strip() for t in values["log"].split(",") if t.strip()]
    sizes = values.get("train_sizes")
    if isinstance(sizes, str):
        values["train_sizes"] = [t.strip() for t in sizes.split(",") if t.strip()]
    elif isinstance(sizes, list | tuple):
        # YAML reads 0.1 and 50 as numbers; a size is kept as its text.
        values["train_sizes"] = [str(v) if isinstance(v, int | float) and not isinstance(v, bool)
                                 else v for v in sizes]
    return build(StudyConfig, values, where)


def validate(cfg: StudyConfig) -> StudyConfig:
    """The rules between settings (each setting's own rule ran when it was built)."""
    if not cfg.models:
        raise ConfigError("models: give at least one model (see `lightlayers models`)")
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(cfg.models)) != len(cfg.models) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("models and seeds must not repeat")
    from lightlayers.executors import executor_info

    info = executor_info(cfg.executor)
    if info.options is not None and hasattr(info.options, "validate"):
        cfg.executor_settings().validate(cfg)
    from lightlayers.models import model_info

    for name in cfg.models:
        try:
            model_info(name)
        except ValueError as e:
            # The registry quotes a name in full, and a name from YAML may be any length.
            raise ConfigError(f"models: {shown(str(e), 300, quote=False)}") from None
    def known(field: str, name: str) -> None:
        # Entries for zoo models outside this run are fine (a YAML's sizes stay valid when
        # --models picks a subset); a name the zoo does not know is a typo.
        if not isinstance(name, str):
            raise ConfigError(f"{field}: model names must be text, got {shown(name)}")
        if name not in cfg.models:
            try:
                model_info(name)
            except ValueError as e:
                raise ConfigError(f"{field}: {shown(str(e), 300, quote=False)}") from None

    from lightlayers.models import check_options

    for name, opts in cfg.model_options.items():
        known("model_options", name)
        if not isinstance(opts, dict):
            raise ConfigError(f"model_options.{name}: expected a mapping, got {shown(opts)}")
        try:
            check_options(name, opts)
        except ValueError as e:
            raise ConfigError(f"model_options.{name}: {shown(str(e), 300, quote=False)}"
                              ) from None
    if cfg.weights is not None and not any(
            model_info(m).extra.get("takes_weights") for m in cfg.models):
        raise ConfigError(
            f"weights: {shown(cfg.weights)} was given, but no model of this study takes "
            f"pretrained weights ({', '.join(cfg.models)}); drop --weights, or add a "
            "transfer-* model")
    for name, px in cfg.sizes.items():
        known("sizes", name)
        problem = (SIZE_RULE(px) if isinstance(px, int) and not isinstance(px, bool)
                   else "expected an int")
        if problem:
            raise ConfigError(f"sizes.{name}: {problem} ({MIN_SIZE}..{MAX_SIZE} pixels), "
                              f"got {shown(px)}")
    for name, own in cfg.model_protocols.items():
        known("model_protocols", name)
        if not isinstance(own, dict):
            raise ConfigError(f"model_protocols.{name}: expected a mapping, got {shown(own)}")
        cfg.resolved_protocol(name)
    protocol = cfg.resolved_protocol()
    if protocol.tta and not protocol.augment.enabled:
        raise ConfigError(f"tta: {protocol.tta} augmented views were asked for, but the "
                          f"protocol {protocol.name!r} augments nothing; turn augmentation on "
                          "(e.g. --protocol improved) or drop tta")
    return cfg


def config_from_dict(values: dict[str, Any]) -> StudyConfig:
    """Rebuild and validate a config from :meth:`StudyConfig.to_dict` (how Ray workers get it)."""
    return validate(_build_study(dict(values), "config"))


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``--set`` flags (``KEY=VALUE``, VALUE read as YAML; ``augment.KEY=VALUE`` too) as a
    ``protocol_overrides`` mapping, later flags winning."""
    from lightlayers.yamlio import load_yaml

    out: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {shown(text)}: expected KEY=VALUE, e.g. --set class_weighting=false")
        value = load_yaml(raw, f"--set {shown(text)}")
        head, dot, sub = key.partition(".")
        if dot:
            if head != "augment" or not sub:
                raise ConfigError(f"--set {shown(text)}: only augment.KEY may be dotted")
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
    from lightlayers.yamlio import read_yaml_file

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded = read_yaml_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        odd = [k for k in loaded if not isinstance(k, str)]
        if odd:
            raise ConfigError(f"{path}: setting names must be text, got {shown(odd[0])}")
        values.update(loaded)
    extra_proto = overrides.pop("protocol_overrides", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if extra_proto:  # merged into the file's, the flags winning
        values["protocol_overrides"] = merge_overrides(values.get("protocol_overrides") or {},
                                                       extra_proto)
    where = str(path) if path is not None else "config"
    return validate(_build_study(values, where))
