"""A study: plan trials (models x seeds), run each, record everything in the run folder.

Run folder: ``results.db`` (the record), ``results.csv`` (one row per trial), ``config.yaml``
(the resolved config) and ``checkpoints/`` (selected weights as float32 safetensors).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lightlayers.config import ConfigError, Protocol, StudyConfig
from lightlayers.data import Dataset, DeviceLoader, load_dataset
from lightlayers.metrics import classification_metrics
from lightlayers.models import create_model, model_info
from lightlayers.models.interface import ClassifierBase
from lightlayers.models.weights import ResolvedWeights, WeightsError
from lightlayers.params import count_params
from lightlayers.progress import ProgressReporter
from lightlayers.store import ResultsStore, StoreError, trial_key
from lightlayers.train import (
    TensorLoader,
    amp_in_use,
    autocast,
    evaluate,
    fit,
    synchronize,
)

if TYPE_CHECKING:
    from lightlayers.executors.ray import RayExecutor

CSV_COLUMNS = [
    "model", "seed", "protocol", "status", "params_total", "params_trainable", "size_mb", "macs",
    "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "auc",
    "collapsed", "threshold", "test_loss", "total_time_s", "epoch_time_s", "first_epoch_s",
    "feature_time_s", "infer_img_s", "latency_ms", "best_epoch", "epochs_run", "attempts", "error",
]
# Settings that change a trial's numbers: a run folder holds one value of each. Where trials
# run is not one of them, so a study can be resumed with another executor; nor is the spelling
# of the data's path: the data is compared by content (data_fingerprint).
_SETTINGS_EXCLUDED = ("models", "seeds", "out", "report", "device", "threads", "executor",
                      "ray_address", "gpus_per_trial", "cpus_per_trial", "max_retries", "data")


# torch's own default (the machine's cores, or OMP_NUM_THREADS), taken before anything here
# changes it.
_DEFAULT_THREADS = torch.get_num_threads()


def resolve_threads(cfg: StudyConfig) -> StudyConfig:
    """Fix the torch thread count of every trial, whichever executor runs it.

    CPU results depend on the thread count (it changes the order of floating-point sums), so one
    policy serves both executors: ``threads`` if given, else ``cpus_per_trial`` if given, else
    this machine's default (all cores) -- except Ray trials on GPUs, which get one thread so
    several can share a node. Ray reserves ``cpus_per_trial`` (default: ``threads``) CPUs per
    trial, so a default Ray run gives the numbers of a default local run.
    """
    threads = cfg.threads or cfg.cpus_per_trial
    if threads is None:
        gpu_trials = cfg.executor == "ray" and cfg.gpus_per_trial > 0
        threads = 1 if gpu_trials else _DEFAULT_THREADS
    return dataclasses.replace(cfg, threads=threads, cpus_per_trial=cfg.cpus_per_trial or threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrialSpec:
    model: str
    seed: int
    protocol: str

    def key(self, data_key: str) -> str:
        return trial_key(self.model, self.seed, self.protocol, data_key)


def input_sizes(cfg: StudyConfig, model: str) -> tuple[int | None, int | None]:
    """(decode size, crop) of ``model``'s images: the input side is ``sizes[model]``, else an
    explicit --size, else a pretrained backbone's own; a backbone whose weights' recipe
    resizes then center-crops (InceptionV3: 342 then 299) gets its images decoded at the
    resize size and cropped on the device, in the same ratio at any input side."""
    info = model_info(model)
    pre = info.extra.get("preprocess")
    side = cfg.sizes.get(model, cfg.size)
    if side is None and pre is not None:
        side = pre.crop_size
    if side is None or pre is None:
        return side, None
    decode, crop = pre.sizes_for(side)
    return decode, (crop if crop != decode else None)


def data_size_for(cfg: StudyConfig, model: str) -> int | None:
    """The side ``model``'s images are decoded at (see :func:`input_sizes`)."""
    return input_sizes(cfg, model)[0]


def data_key(ds: Dataset) -> str:
    return f"{ds.name}@{ds.identity['cache_key'][:12]}"


# Identity fields of a loaded dataset that name where it was read, not what it holds.
_WHERE = ("source", "cache_key", "cache_path", "options")
# Decode options that do not change which images are in which split.
_DECODE_ONLY = ("size", "in_chans", "resize", "resample", "out_chans", "chans")


def data_fingerprint(ds: Dataset) -> dict[str, Any]:
    """What a run folder is bound to: the data's content (its source's own hash, whatever the
    path's spelling) and how it was split; not the decode size, which differs per model."""
    content = {k: v for k, v in ds.identity.items() if k not in _WHERE}
    split = {k: v for k, v in ds.identity.get("options", {}).items() if k not in _DECODE_ONLY}
    split["members"] = {name: _members_digest(s) for name, s in ds.splits.items()}
    return _jsonable({"name": ds.name, "content": content, "split": split,
                      "classes": list(ds.classes)})


def _members_digest(split: Any) -> str:
    """Which images a split holds (their ids, or for array sources their labels in order)."""
    import hashlib

    h = hashlib.sha256(str(len(split)).encode())
    if split.ids is not None:
        h.update("\n".join(map(str, split.ids)).encode())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return f"{len(split)}:{h.hexdigest()[:16]}"


def _data_change(previous: dict[str, Any], now: dict[str, Any],
                 files_old: Any = None, files_new: Any = None) -> str:
    """How the data differs from a run folder's, in words (file by file when both manifests,
    file -> size and content hash, are known)."""
    if previous.get("content") != now.get("content"):
        old, new = previous.get("content", {}), now.get("content", {})
        if isinstance(files_old, dict) and isinstance(files_new, dict):
            added = len(set(files_new) - set(files_old))
            removed = len(set(files_old) - set(files_new))
            modified = sum(files_old[f] != files_new[f] for f in set(files_old) & set(files_new))
            return f"{added} file(s) added, {removed} removed, {modified} modified"
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return "its content differs (" + ", ".join(
            f"{k}: {str(old.get(k))[:16]} -> {str(new.get(k))[:16]}" for k in changed) + ")"
    if previous.get("classes") != now.get("classes"):
        return f"its classes differ ({previous.get('classes')} -> {now.get('classes')})"
    return f"it is split differently ({previous.get('split')} -> {now.get('split')})"


def takes_weights(name: str) -> bool:
    return bool(model_info(name).extra.get("takes_weights"))


def weights_request(cfg: StudyConfig, name: str) -> str:
    """What the study asks of ``name``'s weights: its model_options, else --weights, else its
    torchvision DEFAULT."""
    asked = cfg.model_options.get(name, {}).get("weights", cfg.weights)
    return "DEFAULT" if asked is None else str(asked)


def _model_kwargs(cfg: StudyConfig, name: str) -> dict[str, Any]:
    kw = dict(cfg.model_options.get(name, {}))
    if takes_weights(name):
        kw["weights"] = weights_request(cfg, name)
    return kw


def _loader_options(model: ClassifierBase, data_chans: int, image_size: int,
                    crop: int | None) -> dict[str, Any]:
    pre = model.preprocess
    opts: dict[str, Any] = {}
    if pre.mean is not None and pre.std is not None:
        opts["mean"], opts["std"] = list(pre.mean), list(pre.std)
    if model.model_info.in_chans == 3 and data_chans == 1:
        opts["out_chans"] = 3  # grey images replicated, as the study fed RGB copies of X-rays
    if crop is not None and crop != image_size:
        opts["crop"] = crop
    return opts


def checkpoint_name(spec: TrialSpec, data_id: str) -> str:
    """One file per trial: the data's key is part of the name, so a trial on other data (or a
    rerun's) never shares or overwrites another trial's checkpoint."""
    data = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in data_id)
    return f"{spec.model}__seed{spec.seed}__{spec.protocol}__{data}.safetensors"


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, str]) -> float:
    """Float32 safetensors of the full state; returns its size in MB (10^6 bytes).

    A file already there is replaced only when it belongs to the same trial (an attempt that
    crashed before it was recorded); another trial's checkpoint is never overwritten.
    """
    from safetensors.torch import save_file

    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and _checkpoint_trial(path) != metadata.get("trial"):
        raise StoreError(f"{path} already holds the checkpoint of another trial "
                         f"({_checkpoint_trial(path)}); it is kept. Use another --out folder")
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path.stat().st_size / 1e6


def _checkpoint_trial(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("trial")
    except Exception:  # unreadable: not a checkpoint of any recorded trial
        return None


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates for one image (FLOP counter / 2, matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return int(counter.get_total_flops() // 2)


@torch.no_grad()
def measure_inference(model: nn.Module, x: torch.Tensor, device: torch.device,
                      budget_s: float = 1.0) -> tuple[float, float]:
    """Images/s at the batch size of ``x`` and median batch-1 latency in ms."""
    model.eval()
    model(x)  # warm-up (allocations, cudnn autotune)
    synchronize(device)
    n, t0 = 0, time.perf_counter()
    while n == 0 or (time.perf_counter() - t0 < budget_s and n < 20):
        model(x)
        synchronize(device)
        n += 1
    throughput = n * len(x) / (time.perf_counter() - t0)
    one = x[:1]
    model(one)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s / 2 and len(times) < 50):
        synchronize(device)
        t = time.perf_counter()
        model(one)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return float(throughput), float(np.median(times) * 1e3)


def apply_protocol(model: ClassifierBase, protocol: Protocol) -> None:
    """The protocol's settings that live in the model: head dropout, BatchNorm momentum.

    A frozen backbone stays in eval mode, so its BatchNorm statistics never move whatever the
    momentum; fine-tuned stages follow the protocol like the rest.
    """
    model.set_head_dropout(protocol.dropout)
    if protocol.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = protocol.bn_momentum


def run_trial(spec: TrialSpec, ds: Dataset, data_id: str, cfg: StudyConfig,
              protocol: Protocol, device: torch.device, out_dir: Path,
              reporter: ProgressReporter | None = None,
              weights: ResolvedWeights | None = None) -> dict[str, Any]:
    """Train and evaluate one model with one seed; returns what the store records.

    ``weights``: the model's pretrained weights as resolved before the study (a transfer
    model's trial never fetches weights itself).
    """
    seed_everything(spec.seed)
    kwargs = _model_kwargs(cfg, spec.model)
    if weights is not None:
        kwargs["weights"] = weights
    elif takes_weights(spec.model):
        # A trial run outside run_study (a script, a test): resolve from the cache only.
        from lightlayers.models.transfer import resolve_model_weights

        kwargs["weights"] = resolve_model_weights(spec.model, kwargs["weights"], download=False)
    model = create_model(spec.model, num_classes=ds.num_classes,
                         in_chans=cfg.in_chans or _model_in_chans(spec.model, ds.in_chans),
                         **kwargs)
    apply_protocol(model, protocol)
    model.to(device)
    lo = _loader_options(model, ds.in_chans, ds.image_size, input_sizes(cfg, spec.model)[1])
    bs = protocol.batch_size
    amp = amp_in_use(device, protocol)
    aug = protocol.augment if protocol.augment.enabled else None
    train_ld = DeviceLoader(ds.splits["train"], bs, device, shuffle=True, seed=spec.seed,
                            augment=aug, **lo)
    val_ld = DeviceLoader(ds.splits["val"], bs, device, **lo)
    test_ld = DeviceLoader(ds.splits["test"], bs, device, **lo)
    notes: list[str] = []
    feature_time = None
    feature_hit = None
    trainee: ClassifierBase = model
    if model.frozen and aug is None:
        from lightlayers.features import cached_features, feature_key

        # Two files under one weights name (a planted or replaced one) differ by checksum.
        weights_id = json.dumps(model.weights_info(), sort_keys=True)
        key = feature_key(data_id, spec.model, weights_id, ds.image_size, lo, amp)
        def replaced(msg: str) -> None:
            notes.append(msg)
            if reporter:
                reporter.log(f"  {msg}")

        feats, feature_time, feature_hit = cached_features(
            key, model.backbone, {"train": train_ld, "val": val_ld, "test": test_ld}, device,
            amp is not None, on_replace=replaced)
        notes.append("backbone features: " + ("reused from the feature cache" if feature_hit
                                              else f"computed once in {feature_time:.1f}s"))
        if reporter:
            reporter.log(f"  {notes[-1]}")
        trainee = model.feature_head()
        train_ld = TensorLoader(*feats["train"], bs, shuffle=True, seed=spec.seed)
        val_ld = TensorLoader(*feats["val"], bs)
        test_ld = TensorLoader(*feats["test"], bs)
    elif model.frozen:
        notes.append("augmentation is on: frozen features cannot be cached, full forwards used")
        if reporter:
            reporter.log(f"  {notes[-1]}")

    if reporter:
        reporter.start_trial(f"{spec.model} seed {spec.seed}", protocol.epochs)
    result = fit(
        trainee, train_ld, val_ld, protocol, device,
        train_labels=np.asarray(ds.splits["train"].labels), num_classes=ds.num_classes,
        positive_class=ds.positive_class,
        on_epoch=(lambda row: reporter.epoch(row, protocol.epochs)) if reporter else None,
    )
    test = evaluate(trainee, test_ld, device, amp is not None)
    m = classification_metrics(test.labels, test.probs, ds.positive_class, result.threshold)

    ckpt = out_dir / "checkpoints" / checkpoint_name(spec, data_id)
    size_mb = save_checkpoint(model, ckpt, {
        "trial": spec.key(data_id),
        "model": spec.model, "seed": str(spec.seed), "protocol": spec.protocol,
        "classes": json.dumps(list(ds.classes)), "in_chans": str(model.model_info.in_chans),
        "image_size": str(ds.image_size), "data": data_id,
    })
    x_test = next(iter(DeviceLoader(ds.splits["test"], 64, device, **lo)))[0]
    macs = count_macs(model, x_test)
    with autocast(device, amp is not None):
        infer_img_s, latency_ms = measure_inference(model, x_test, device)
    counts = count_params(model)
    metrics = {
        "params_total": counts.total, "params_trainable": counts.trainable, "size_mb": size_mb,
        "macs": macs, "test_loss": test.loss,
        **{k: m[k] for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity",
                             "precision", "f1", "auc", "collapsed", "threshold")},
        "total_time_s": result.total_time_s + (feature_time or 0.0),
        "epoch_time_s": result.epoch_time_s, "first_epoch_s": result.first_epoch_s,
        "feature_time_s": feature_time, "infer_img_s": infer_img_s, "latency_ms": latency_ms,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
    }
    extra = {
        "amp": result.amp, "speed": result.speed, "device": str(device),
        "threads": torch.get_num_threads(),
        "image_size": ds.image_size, "in_chans": model.model_info.in_chans,
        # Only pretrained backbones have weights to record; "none" labels a random backbone.
        "weights": None, "feature_cache_hit": feature_hit,
        **(model.weights_info() if takes_weights(spec.model) else {}),
        **({} if weights is None else {"weights_notes": weights.notes}),
        "input_size": lo.get("crop", ds.image_size),
        "head_time_s": result.total_time_s if feature_time is not None else None,
        "notes": notes + result.notes, "protocol": dataclasses.asdict(protocol),
        "loader": lo,
    }
    return {
        "metrics": metrics, "history": result.history, "confusion": m["confusion"],
        "predictions": {"classes": list(ds.classes), "labels": test.labels, "probs": test.probs},
        "extra": extra, "checkpoint": str(ckpt.relative_to(out_dir)),
    }


def _model_in_chans(name: str, data_chans: int) -> int:
    """The model's own channel count, unless the data has more (3-channel data, 1-ch model)."""
    own = model_info(name).in_chans
    return max(own, data_chans)


def write_results_csv(store: ResultsStore, path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for t in store.trials():
        row = dict(t)
        if row.get("collapsed") is not None:
            row["collapsed"] = int(row["collapsed"])
        w.writerow(row)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def _settings_diff(previous: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Settings that differ from a run folder's. A setting the folder predates counts as its
    default value, so folders written before it was added still resume."""
    if previous is None:
        return []
    defaults = _settings(StudyConfig())
    return sorted(k for k in set(previous) | set(now)
                  if previous.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))


def _record_skipped(out: Path, datasets: Any, log: Any) -> None:
    """Undecodable files left out (``on_bad_image: skip``): listed in the run folder."""
    rows = sorted({(f, r) for ds in datasets for f, r in ds.skipped})
    path = out / "skipped_images.csv"
    if not rows:
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "reason"])
    w.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    log(f"{len(rows)} undecodable image file(s) skipped, listed in {path}")


def _settings(cfg: StudyConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    for k in _SETTINGS_EXCLUDED:
        d.pop(k, None)
    # Unset means each backbone's DEFAULT, which run folders written before recorded as such.
    d["weights"] = d.get("weights") or "DEFAULT"
    return json.loads(json.dumps(d, sort_keys=True))


@dataclass
class StudyOutcome:
    out_dir: Path
    counts: dict[str, int]
    ran: int
    skipped: int


def run_study(cfg: StudyConfig, progress: bool = True) -> StudyOutcome:
    """Run every pending trial of ``cfg``; done trials in the run folder are skipped."""
    import yaml

    cfg = resolve_threads(cfg)
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # With Ray the trials run on the workers' devices: a head node without a GPU must not
    # refuse --device cuda, so the driver only describes its own.
    device = resolve_device(cfg.device if cfg.executor == "local" else "auto")
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    protocol = cfg.resolved_protocol()
    executor = _make_executor(cfg, protocol, device, out)
    lock = _lock_run_folder(out)
    reporter = ProgressReporter(len(cfg.models) * len(cfg.seeds), enabled=progress)
    store = ResultsStore(out / "results.db")
    try:
        previous = store.meta().get("settings")
        diff = _settings_diff(previous, _settings(cfg))
        if diff:
            raise ConfigError(
                f"{out} holds a study with other settings ({', '.join(diff)} differ); "
                "use another --out folder, or the same settings to resume or extend it"
            )
        # Weights first: a transfer model that cannot have its weights is known (and said) before
        # any data is decoded or any model trains.
        weights, weight_errors = resolve_study_weights(cfg, reporter.log, progress)
        datasets: dict[int | None, Dataset] = {}

        def dataset_for(model: str) -> Dataset:
            size = data_size_for(cfg, model)
            if size not in datasets:
                reporter.log(f"loading data {cfg.data}" + (f" at {size}px" if size else ""))
                datasets[size] = load_dataset(
                    cfg.data, size=size, in_chans=cfg.in_chans, resize=cfg.resize,
                    val_fraction=cfg.val_fraction, seed=cfg.split_seed, progress=progress,
                    on_bad_image=cfg.on_bad_image,
                    allow_missing_classes=cfg.allow_missing_classes)
                check_data(datasets[size])
            return datasets[size]

        recorded = store.meta().get("data_fingerprint")

        def check_data(ds: Dataset) -> None:
            nonlocal recorded
            now = data_fingerprint(ds)
            manifest = ds.details.get("manifest")
            if recorded is None:
                recorded = now
                store.set_meta(data_fingerprint=now, data_manifest=manifest)
            elif recorded != now:
                change = _data_change(recorded, now, store.meta().get("data_manifest"), manifest)
                raise ConfigError(
                    f"{out} was made with other data: {cfg.data} has changed since "
                    f"({change}). Its trials are kept as they are; run the changed data into "
                    "a new folder with --out NEW_FOLDER")

        specs = [TrialSpec(m, s, cfg.protocol) for m in cfg.models for s in cfg.seeds]
        keyed = []
        for spec in specs:
            ds = dataset_for(spec.model)
            keyed.append((spec, ds, data_key(ds)))
        first = datasets[next(iter(datasets))]
        _record_skipped(out, datasets.values(), reporter.log)
        store.set_meta(
            settings=_settings(cfg), config=cfg.to_dict(),
            protocol=dataclasses.asdict(protocol), environment=_env(device),
            data=_jsonable(first.summary()),
        )
        (out / "config.yaml").write_text(yaml.safe_dump(
            {**cfg.to_dict(), "resolved_protocol": dataclasses.asdict(protocol)},
            sort_keys=False))
        redo = store.reset_interrupted()
        if redo:
            reporter.log(f"redoing {len(redo)} trial(s) interrupted by an earlier crash")
        store.add_trials({"model": sp.model, "seed": sp.seed, "protocol": sp.protocol,
                          "data": dk, "config": {"model_options": _model_kwargs(cfg, sp.model)}}
                         for sp, _, dk in keyed)
        status = {t["key"]: t["status"] for t in store.trials()}
        todo = [(sp, ds, dk) for sp, ds, dk in keyed if status[sp.key(dk)] != "done"]
        skipped = len(keyed) - len(todo)
        if skipped:
            reporter.log(f"{skipped} trial(s) already done in {out}: skipped")
        for sp, _, dk in todo:
            if sp.model in weight_errors:
                store.mark_running(sp.key(dk))  # an attempt, counted as any other
                store.record_failed(sp.key(dk), weight_errors[sp.model],
                                    {"error": weight_errors[sp.model], "stage": "weights"})
        todo = [t for t in todo if t[0].model not in weight_errors]
        reporter.total = len(todo)
        tasks = [Task(spec, ds, dk, weights.get(spec.model)) for spec, ds, dk in todo]
        executor.reporter = reporter
        try:
            for task, res, error in executor.run(tasks, start=lambda t: store.mark_running(t.key)):
                spec = task.spec
                if error is not None:
                    store.record_failed(task.key, error["error"], error)
                    reporter.end_trial(f"  FAILED {spec.model} seed {spec.seed}: {error['error']}")
                    continue
                assert res is not None
                store.record_done(task.key, res["metrics"], res["history"], res["predictions"],
                                  res["confusion"], res["extra"], res["checkpoint"])
                reporter.end_trial(_done_line(spec, res["metrics"]))
        except KeyboardInterrupt:
            # Finished trials stay recorded; the interrupted one is redone by the next run.
            store.reset_interrupted()
            raise
        write_results_csv(store, out / "results.csv")
        counts = store.counts()
        return StudyOutcome(out, counts, ran=len(todo), skipped=skipped)
    finally:
        reporter.close()
        store.close()
        lock.close()


def resolve_study_weights(cfg: StudyConfig, log: Any, progress: bool = True
                          ) -> tuple[dict[str, ResolvedWeights], dict[str, str]]:
    """Resolve every transfer model's weights once (cache, download or file), before training.

    Returns the resolved weights per model and, per model whose weights cannot be had, the
    message saying what to do; those models' trials are recorded as failed at once.
    """
    from lightlayers.models.transfer import resolve_model_weights

    resolved: dict[str, ResolvedWeights] = {}
    errors: dict[str, str] = {}
    for name in cfg.models:
        if not takes_weights(name):
            continue
        try:
            rw = resolve_model_weights(name, weights_request(cfg, name), progress=progress)
        except WeightsError as e:
            errors[name] = str(e)
            log(f"weights: {name} cannot run, its {len(cfg.seeds)} trial(s) are recorded as "
                f"failed and the other models train: {e}")
            continue
        resolved[name] = rw
        where = f" from {rw.file}" if rw.file else ""
        log(f"weights: {name} uses {rw.label}{where}")
        for note in rw.notes:
            log(f"  warning: {note}")
    return resolved, errors


def _make_executor(cfg: StudyConfig, protocol: Protocol, device: torch.device,
                   out: Path) -> LocalExecutor | RayExecutor:
    """The executor ``cfg.executor`` names; built before any data is loaded, so that a missing
    optional dependency (Ray) is reported at once."""
    if cfg.executor == "ray":
        from lightlayers.executors.ray import RayExecutor

        return RayExecutor(cfg, protocol, out)
    return LocalExecutor(cfg, protocol, device, out, None)


def _lock_run_folder(out: Path) -> Any:
    """One process per run folder: a second one would reset the first one's running trial."""
    import fcntl

    handle = open(out / ".lock", "a+")  # noqa: SIM115  (held open for the whole study)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"another `lightlayers run` is using {out}; wait for it to finish or use another "
            "--out folder"
        ) from None
    return handle


@dataclass(frozen=True)
class Task:
    spec: TrialSpec
    data: Dataset
    data_key: str
    weights: ResolvedWeights | None = None  # resolved before the study; None: takes none

    @property
    def key(self) -> str:
        return self.spec.key(self.data_key)


TaskOutcome = tuple[Task, dict[str, Any] | None, dict[str, Any] | None]


def failure(e: BaseException) -> dict[str, Any]:
    """What the store records of a failed trial: the one-line reason and a short traceback."""
    detail = "".join(traceback.format_exception_only(type(e), e)).strip()
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=8))
    return {"error": detail, "traceback": tb}


class LocalExecutor:
    """Runs trials one after another in this process (the default executor).

    An executor yields ``(task, result, None)`` or ``(task, None, failure)`` per task and calls
    ``start(task)`` when a task begins; the caller is the only writer of the results store.
    """

    def __init__(self, cfg: StudyConfig, protocol: Protocol, device: torch.device, out: Path,
                 reporter: ProgressReporter | None) -> None:
        self.cfg, self.protocol, self.device = cfg, protocol, device
        self.out, self.reporter = out, reporter

    def run(self, tasks: list[Task], start: Any) -> Iterator[TaskOutcome]:
        for task in tasks:
            start(task)
            try:
                res = run_trial(task.spec, task.data, task.data_key, self.cfg, self.protocol,
                                self.device, self.out, self.reporter, weights=task.weights)
            except Exception as e:  # the study goes on; the reason is recorded with the trial
                yield task, None, failure(e)
                continue
            yield task, res, None


def _done_line(spec: TrialSpec, m: dict[str, Any]) -> str:
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
    return (f"  done {spec.model} seed {spec.seed}: acc {m['accuracy']:.4f} auc {auc} "
            f"({m['total_time_s']:.1f}s, {m['epoch_time_s']:.2f}s/epoch)"
            + ("  [collapsed: one class predicted]" if m["collapsed"] else ""))


def _env(device: torch.device) -> dict[str, Any]:
    from lightlayers.environment import environment

    return environment(device)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
