"""One trial: build a model, train it under a protocol, evaluate it on the test split,
write its checkpoint and measure it; returns what the results store records
(:class:`lightlayers.trial_result.TrialResult`)."""

from __future__ import annotations

import dataclasses
import json
import traceback
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lightlayers.config import Protocol, StudyConfig
from lightlayers.data import Dataset, DeviceLoader
from lightlayers.measure import count_macs, measure_inference
from lightlayers.metrics import classification_metrics
from lightlayers.models import create_model, model_info
from lightlayers.models.interface import ClassifierBase
from lightlayers.models.weights import ResolvedWeights, WeightsError
from lightlayers.params import count_params
from lightlayers.progress import ProgressReporter
from lightlayers.runfolder.checkpoint import checkpoint_name, checkpoint_sha256, save_checkpoint
from lightlayers.runtime import seed_everything
from lightlayers.spec import TrialSpec
from lightlayers.train import TensorLoader, TrialError, amp_in_use, autocast, evaluate, fit
from lightlayers.trial_result import TrialPredictions, TrialResult


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


def takes_weights(name: str) -> bool:
    return bool(model_info(name).extra.get("takes_weights"))


def weights_request(cfg: StudyConfig, name: str) -> str:
    """What the study asks of ``name``'s weights: its model_options, else --weights, else its
    torchvision DEFAULT."""
    asked = cfg.model_options.get(name, {}).get("weights", cfg.weights)
    return "DEFAULT" if asked is None else str(asked)


def model_kwargs(cfg: StudyConfig, name: str) -> dict[str, Any]:
    kw = dict(cfg.model_options.get(name, {}))
    if takes_weights(name):
        kw["weights"] = weights_request(cfg, name)
    return kw


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
              weights: ResolvedWeights | None = None) -> TrialResult:
    """Train and evaluate one model with one seed; returns what the store records.

    ``weights``: the model's pretrained weights as resolved before the study (a transfer
    model's trial never fetches weights itself).
    """
    seed_everything(spec.seed)
    from lightlayers.data.subsets import FULL, draw_subset, parse_train_size, subset_dataset

    # Drawn here, wherever the trial runs (a Ray worker too), from the study's split seed:
    # every model and seed of one size trains on the same images.
    subset = draw_subset(ds, FULL if spec.train_size is None else
                         parse_train_size(spec.train_size), cfg.split_seed)
    ds = subset_dataset(ds, subset)
    if spec.model in cfg.model_protocols:
        # A tuned run: this model trains with its own settings (lightlayers.tune).
        protocol = cfg.resolved_protocol(spec.model)
    kwargs = model_kwargs(cfg, spec.model)
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
    train_ld: Any = DeviceLoader(ds.splits["train"], bs, device, shuffle=True, seed=spec.seed,
                            augment=aug, **lo)
    val_ld: Any = DeviceLoader(ds.splits["val"], bs, device, **lo)
    test_ld: Any = DeviceLoader(ds.splits["test"], bs, device, **lo)
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
            key, cast(Any, model).backbone, {"train": train_ld, "val": val_ld, "test": test_ld},
            device, amp is not None, on_replace=replaced)
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

    teacher = None
    if protocol.teacher is not None:
        if trainee is not model:
            raise TrialError(f"teacher {protocol.teacher}: a frozen backbone trains on cached "
                             "features, which no teacher can see; distil into a model that "
                             "trains on images")
        from lightlayers.fingerprint import data_fingerprint
        from lightlayers.teacher import TeacherError, load_teacher

        try:
            # The loader options as the teacher's trial recorded its own (JSON).
            teacher = load_teacher(protocol.teacher, data_fingerprint(ds), ds.image_size,
                                   json.loads(json.dumps(lo)), ds.num_classes, device,
                                   ds.in_chans)
        except TeacherError as e:
            raise TrialError(str(e)) from e
        notes.append(f"distilled from {len(teacher.models)} teacher trial(s) of "
                     f"{protocol.teacher} (T={protocol.distill_temperature:g}, "
                     f"weight {protocol.distill_weight:g})")
    if reporter:
        reporter.start_trial(spec.label, protocol.epochs)
    result = fit(
        trainee, train_ld, val_ld, protocol, device,
        train_labels=np.asarray(ds.splits["train"].labels), num_classes=ds.num_classes,
        positive_class=ds.positive_class,
        on_epoch=(lambda row: reporter.epoch(row, protocol.epochs)) if reporter else None,
        teacher=teacher.soft_targets if teacher is not None else None,
    )
    amp = result.amp  # what training used ("amp: auto" on the CPU decides by timing in fit)
    test = evaluate(trainee, test_ld, device, amp is not None)
    if protocol.tta and aug is not None and trainee is model:
        test = _with_tta(test, model, ds.splits["test"], protocol.tta, bs, device, aug, lo,
                         amp is not None)
        notes.append(f"test-time augmentation: test probabilities averaged over the image "
                     f"and {protocol.tta} augmented views")
    elif protocol.tta:
        notes.append("test-time augmentation skipped: a frozen backbone's cached features "
                     "cannot be augmented")
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
    if cfg.deployment:
        deployed = _deployment(model, ds, lo)
        if isinstance(deployed, str):
            notes.append(deployed)
    counts = count_params(model)
    metrics: dict[str, float | int | None] = {
        "params_total": counts.total, "params_trainable": counts.trainable, "size_mb": size_mb,
        "macs": macs, "test_loss": test.loss,
        # Every registered score of the test predictions (lightlayers.metrics.registry).
        **{k: v for k, v in m.items() if k != "confusion"},
        "total_time_s": result.total_time_s + (feature_time or 0.0),
        "epoch_time_s": result.epoch_time_s, "first_epoch_s": result.first_epoch_s,
        "feature_time_s": feature_time, "infer_img_s": infer_img_s, "latency_ms": latency_ms,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        **(deployed if cfg.deployment and isinstance(deployed, dict) else {}),
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
        "loader": lo, "teacher": None if teacher is None else teacher.record,
        # The training images: part of the trial's data identity.
        "train_set": subset.record(ds.classes),
        # What every reader of the checkpoint checks the file against
        # (runfolder.trials.FinishedTrial).
        "checkpoint_sha256": checkpoint_sha256(ckpt),
    }
    return TrialResult(
        metrics=metrics, history=result.history, confusion=m["confusion"],
        predictions=TrialPredictions(list(ds.classes), test.labels, test.probs),
        extra=extra, checkpoint=str(ckpt.relative_to(out_dir)),
    )


def _with_tta(plain: Any, model: nn.Module, split: Any, views: int, batch: int,
              device: torch.device, aug: Any, lo: dict[str, Any], amp: bool) -> Any:
    """``plain`` (the evaluation of ``split``: the test split, or a tuning fold held out) with
    probabilities and loss averaged over the image and ``views`` augmented copies, each view
    drawn by the training loader's own augmentation with its own seed (the order of the images
    is kept)."""
    import torch.nn.functional as F

    probs = [plain.probs]
    for view in range(views):
        loader = DeviceLoader(split, batch, device, seed=1_000 + view, augment=aug, **lo)
        ev = evaluate(model, loader, device, amp)
        if not np.array_equal(ev.labels, plain.labels):
            raise TrialError("test-time augmentation changed the order of the images")
        probs.append(ev.probs)
    mean = np.mean(probs, axis=0)
    loss = float(F.nll_loss(torch.from_numpy(np.log(np.clip(mean, 1e-12, 1.0))),
                            torch.from_numpy(plain.labels)))
    return dataclasses.replace(plain, loss=loss, accuracy=float((mean.argmax(1) ==
                                                                 plain.labels).mean()),
                               probs=mean)


def _deployment(model: ClassifierBase, ds: Dataset, lo: dict[str, Any]
                ) -> dict[str, float] | str:
    """The deployment numbers of the trained model (lightlayers.deploy.bench), or the note
    saying why there are none: the trial's own numbers stand either way."""
    from lightlayers.deploy.errors import DeployError

    try:
        from lightlayers.deploy.bench import deployment_metrics

        return deployment_metrics(model, ds.splits["train"], ds.splits["test"], lo,
                                  budget_s=2.0)
    except (DeployError, ImportError) as e:
        return f"deployment numbers skipped: {str(e).splitlines()[0] if str(e) else e!r}"


def _model_in_chans(name: str, data_chans: int) -> int:
    """The model's own channel count, unless the data has more (3-channel data, 1-ch model)."""
    own = model_info(name).in_chans
    return max(own, data_chans)


def failure(e: BaseException) -> dict[str, Any]:
    """What the store records of a failed trial: the one-line reason and a short traceback."""
    detail = "".join(traceback.format_exception_only(type(e), e)).strip()
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=8))
    return {"error": detail, "traceback": tb}
