"""Training one model on one dataset under one protocol: ``fit`` and ``evaluate``.

Knows nothing of the results store: it returns numbers, the trial records them. Loss and
accuracy are accumulated on the device and read once per epoch, so there is no host sync per
step; times are wall clock with the device synchronised at epoch boundaries.

Speed settings (``Protocol.compile``, ``Protocol.memory_format``, bf16 autocast) change float
rounding only; :class:`FitResult` ``speed`` says what a run used. What "auto" picks, and why,
is measured in docs/performance.md; ``amp: auto`` on the CPU picks precision and layout by
timing training steps (lightlayers.precision).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from typing import Protocol as TypingProtocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightlayers.config import Protocol
from lightlayers.layers import LightConv2d, LightLinear
from lightlayers.metrics import choose_threshold, diagnose
from lightlayers.models.interface import ClassifierBase

# "auto" compile on the CPU: torch.compile is used when the rest of the run is long enough to
# repay compiling. Measured on the study models at 64 px on a 2-core CPU (docs/performance.md):
# compiled training steps took 0.67-0.72x the eager time, and compiling the forward and backward
# graphs took 17-29 s (under 1 s when torch's on-disk compile cache already holds them).
COMPILE_GAIN = 0.25  # fraction of eager step time saved, on the conservative side
COMPILE_COST_S = 20.0  # seconds a compile is expected to cost (cold ones cost more, cached less)
PROBE_STEPS = 4  # eager steps timed (after one warm-up step) before deciding


class TrialError(RuntimeError):
    """A trial cannot go on (non-finite loss, ...); the study records it and continues."""


class BatchSource(TypingProtocol):
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorLoader:
    """Batches of in-memory tensors on their device (used for cached backbone features)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self._epoch = seed, 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._epoch)
        self._epoch += 1
        n = len(self.y)
        order = torch.randperm(n, generator=gen).to(self.x.device) if self.shuffle else None
        for i in range(0, n, self.batch_size):
            if order is None:
                yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
            else:
                idx = order[i:i + self.batch_size]
                yield self.x[idx], self.y[idx]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def amp_in_use(device: torch.device, protocol: Protocol) -> str | None:
    """The reduced precision used ('bf16') or None, as far as it is known before training:
    ``amp: auto`` on the CPU is decided by timing in :func:`fit`, whose ``FitResult.amp`` is
    what the trial records."""
    amp = protocol.amp
    if device.type == "cuda":
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise TrialError("amp='bf16': this GPU does not support bf16")
        return "bf16" if amp is not False and torch.cuda.is_bf16_supported() else None
    # amp: true means bf16 on CUDA only (what it always meant); the CPU gets bf16 when asked
    # by name, or when "auto" timed it faster (fit).
    return "bf16" if amp == "bf16" and device.type == "cpu" else None


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    labels: np.ndarray
    probs: np.ndarray


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """``torch.channels_last`` when the model's convolution weights are stored that way."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(
                memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def _as_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    # Only image batches have a layout to change; cached features are (B, D).
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


@torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions)
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, amp: bool = False) -> EvalResult:
    """Mean cross-entropy, accuracy, labels and softmax probabilities over ``loader``."""
    model.eval()
    fmt = model_memory_format(model)
    losses, probs, labels = [], [], []
    for x, y in loader:
        with autocast(device, amp):
            logits = model(_as_format(x, fmt))
        logits = logits.float()
        losses.append(F.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, dim=1))
        labels.append(y)
    p = torch.cat(probs).cpu().numpy().astype(np.float64)
    y_np = torch.cat(labels).cpu().numpy()
    loss = float(torch.stack(losses).sum().item()) / max(len(y_np), 1)
    return EvalResult(loss, float((p.argmax(1) == y_np).mean()), y_np, p)


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    threshold: float | None
    total_time_s: float
    first_epoch_s: float
    epoch_time_s: float
    amp: str | None
    notes: list[str] = field(default_factory=list)
    # What the run used: memory_format, compile (mode or None), compile_s (seconds the first
    # compiled step took beyond an eager one), optimizer ("fused" or "for-loop" Adam).
    speed: dict[str, Any] = field(default_factory=dict)


def _lr_lambda(protocol: Protocol, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(protocol.epochs * steps_per_epoch, 1)
    warmup = protocol.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if protocol.schedule == "cosine":
            t = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return 1.0

    return f


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c), so each class carries the same total weight."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def _better(select: str, cand: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None or select == "last":
        return True
    if select == "val_loss":
        return cand["val_loss"] < best["val_loss"]
    key = "val_auc" if select == "val_auc" else "val_acc"
    a, b = cand.get(key), best.get(key)
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return cand["val_loss"] < best["val_loss"]
    return a > b or (a == b and cand["val_loss"] < best["val_loss"])


def resolve_memory_format(setting: str, model: nn.Module,
                          device: torch.device) -> torch.memory_format:
    """The layout ``fit`` trains in, unless ``amp: auto`` on the CPU times the layouts too
    (:func:`_cpu_precision`). "auto" is contiguous (NCHW): on the CPU fp32 channels-last
    training steps were measured slower in eager mode (BatchNorm's channels-last kernels) and not
    consistently faster compiled (docs/performance.md); on CUDA it stays until GPU timings are
    in."""
    del model, device  # "auto" may depend on them once GPU timings are in
    return torch.channels_last if setting == "channels_last" else torch.contiguous_format


def _cpu_precision(model: nn.Module, train: BatchSource, protocol: Protocol,
                   device: torch.device, weight: torch.Tensor | None, penalty: _Penalty | None,
                   teacher: Callable[[torch.Tensor, float], torch.Tensor] | None
                   ) -> tuple[bool, torch.memory_format, dict[str, Any]]:
    """``amp: auto`` on the CPU: (bf16 or not, layout, what the trial records).

    The candidates train copies of the model on the first training batch, drawn from a copy of
    the loader, and the global RNG is restored afterwards: the run that follows is the run the
    chosen settings give when set explicitly."""
    from lightlayers.environment import cpu_name
    from lightlayers.precision import (
        bf16_units,
        cached_choice,
        choice_key,
        cpu_candidates,
        time_candidates,
    )

    units = bf16_units()
    candidates, reason = cpu_candidates("auto", protocol.memory_format, units)
    record: dict[str, Any] = {"bf16_units": units,
                              "candidates": [c.label for c in candidates]}
    if len(candidates) > 1 and not any(p.dim() == 4 for p in model.parameters()):
        candidates, reason = candidates[:1], "fp32: no convolutions to speed up"
    if len(candidates) == 1:
        return candidates[0].bf16, candidates[0].memory_format, {
            **record, "chosen": candidates[0].label, "reason": reason}
    x, y = next(iter(copy.copy(train)))
    key = choice_key(model, tuple(x.shape[1:]), protocol.batch_size, torch.get_num_threads(),
                     cpu_name(), candidates, (bool(penalty), teacher is not None,
                                              protocol.optimizer))
    choice = cached_choice(key)
    cached = choice is not None
    if choice is None:
        rng = torch.get_rng_state()
        plain = dataclasses.replace(protocol, compile="off")
        optim_cls = torch.optim.AdamW if protocol.optimizer == "adamw" else torch.optim.Adam

        def make_step(c: Any) -> Callable[[], None]:
            m = copy.deepcopy(model).to(memory_format=c.memory_format)
            m.train()
            params = [p for p in m.parameters() if p.requires_grad]
            opt = optim_cls(params, lr=protocol.lr, eps=protocol.adam_eps,
                            weight_decay=protocol.weight_decay,
                            fused=_fused_adam_ok(params, device) or None)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
            stepper = _Stepper(m, plain, device, c.bf16, weight,
                               _Penalty(m) if penalty else None, opt, sched, [], {}, teacher)
            xc = _as_format(x, c.memory_format)

            def step() -> None:
                stepper._run(m, xc, y)

            return step

        try:
            choice = time_candidates(candidates, make_step, key)
        finally:
            torch.set_rng_state(rng)
    c = choice.chosen
    return c.bf16, c.memory_format, {**record, **choice.record(cached)}


def _compile_blocker(device: torch.device, model: nn.Module) -> str | None:
    """Why torch.compile cannot or need not run here, or None."""
    if not any(p.dim() == 4 for p in model.parameters()):
        return "no convolutions to speed up"
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")
                                     or shutil.which("clang++")):
        return "no C++ compiler on PATH (torch.compile's CPU backend needs one)"
    if device.type not in ("cpu", "cuda"):
        return f"not tried on {device.type}"
    return None


def _fused_adam_ok(params: Any, device: torch.device) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) \
        else list(params)
    return device.type in _get_fused_kernels_supported_devices() and all(
        p.is_floating_point() and p.device == tensors[0].device for p in tensors)


class _Penalty:
    """The reference's L2 term over the model's LightLayers, found once rather than by walking
    ``model.modules()`` on every step (same value as :func:`lightlayers.light_penalty`)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, LightConv2d | LightLinear) and m.l2]

    def __bool__(self) -> bool:
        return bool(self.layers)

    def __call__(self) -> torch.Tensor:
        total = self.layers[0].penalty()
        for m in self.layers[1:]:
            total = total + m.penalty()
        return total


def fit(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource,
    protocol: Protocol,
    device: torch.device,
    *,
    train_labels: np.ndarray,
    num_classes: int,
    positive_class: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    teacher: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    score: Callable[[EvalResult], dict[str, float]] | None = None,
) -> FitResult:
    """Train ``model`` in place and leave it holding the weights the protocol selects.

    ``train``/``val`` yield ``(inputs, labels)`` already on ``device`` (images, or cached
    backbone features when ``model`` is a head). The selected weights (best validation loss by
    default) are restored at the end; the decision threshold, if the protocol asks for one, is
    chosen on validation only. The model is left in the memory format it trained in.
    ``teacher(x, T)``: soft targets for a training batch (lightlayers.teacher), mixed into the
    loss with the protocol's ``distill_weight`` and ``distill_temperature``.
    ``score(ev)``: more numbers of each epoch's validation pass, added to its history row before
    ``on_epoch`` sees it (lightlayers.tune reports its objective from there).
    """
    from sklearn.metrics import roc_auc_score

    amp = amp_in_use(device, protocol)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrialError("the model has no trainable parameters")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    weight = class_weights(train_labels, num_classes).to(device) if protocol.class_weighting \
        else None
    penalty = _Penalty(model) if protocol.light_l2 else None
    precision: dict[str, Any] | None = None
    if protocol.amp == "auto" and device.type == "cpu":
        use_bf16, fmt, precision = _cpu_precision(model, train, protocol, device, weight,
                                                  penalty, teacher)
        amp = "bf16" if use_bf16 else None
    else:
        fmt = resolve_memory_format(protocol.memory_format, model, device)
        if protocol.amp == "auto":
            precision = {"chosen": f"{amp or 'fp32'} "
                         f"{'channels_last' if fmt == torch.channels_last else 'contiguous'}",
                         "reason": f"on {device.type} auto is what amp: true does"}
    model.to(memory_format=fmt)
    if isinstance(model, ClassifierBase):  # fine-tuned backbones learn at a lower rate
        params: Any = model.param_groups(protocol.lr, protocol.backbone_lr_scale)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    optim_cls = torch.optim.AdamW if protocol.optimizer == "adamw" else torch.optim.Adam
    # One fused kernel for all parameters instead of a dozen small ops per parameter tensor.
    fused = _fused_adam_ok(params, device)
    opt = optim_cls(params, lr=protocol.lr, eps=protocol.adam_eps,
                    weight_decay=protocol.weight_decay, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(protocol, len(train)))
    notes: list[str] = []
    speed: dict[str, Any] = {
        "memory_format": "channels_last" if fmt == torch.channels_last else "contiguous",
        "compile": None, "compile_s": None, "optimizer": "fused" if fused else "for-loop",
    }
    if precision is not None:
        speed["precision"] = precision
        timed = precision.get("step_ms")
        notes.append(f"amp auto: {precision['chosen']}" + (
            " (ms per training step: " + ", ".join(f"{k} {v:.1f}" for k, v in timed.items())
            + (", cached" if precision.get("cached") else "") + ")" if timed
            else f" ({precision.get('reason')})"))
    if protocol.teacher is not None and teacher is None:
        raise TrialError(f"teacher {protocol.teacher}: no teacher was loaded for this fit")
    step = _Stepper(model, protocol, device, amp is not None, weight, penalty, opt, sched,
                    notes, speed, teacher)
    total_steps = protocol.epochs * len(train)
    ema = _ema(model, protocol.ema)
    # What validation, selection and test see: the weights themselves or their average.
    judged = model if ema is None else ema.module
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epoch_times: list[float] = []
    synchronize(device)
    t_start = time.perf_counter()
    for epoch in range(1, protocol.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        lr = opt.param_groups[0]["lr"]
        for x, y in train:
            loss, logits = step(_as_format(x, fmt), y, total_steps)
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        # The one host sync of the training part of the epoch.
        train_loss_sum, correct_n = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
        train_loss = train_loss_sum / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrialError(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        ev = evaluate(judged, val, device, amp is not None)
        synchronize(device)
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        row: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": correct_n / max(seen, 1),
            "val_loss": ev.loss, "val_acc": ev.accuracy, "lr": lr, "time_s": dt,
            "compiled": step.compiled is not None,
        }
        if speed["compile_s"] is not None and not any("compile_s" in h for h in history):
            row["compile_s"] = speed["compile_s"]  # this epoch's time includes compiling
        if positive_class is not None and len(np.unique(ev.labels)) == 2:
            row["val_auc"] = float(roc_auc_score(ev.labels == positive_class,
                                                 ev.probs[:, positive_class]))
        if not math.isfinite(ev.loss):
            raise TrialError(f"non-finite validation loss in epoch {epoch}")
        if score is not None:
            row.update(score(ev))
        if _better(protocol.select, row, best):
            best = row
            best_state = {k: v.detach().clone() for k, v in _mutable_state(judged).items()}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    synchronize(device)
    total_time = time.perf_counter() - t_start
    assert best is not None and best_state is not None
    model.load_state_dict(best_state, strict=False)
    threshold = None
    if protocol.threshold == "val_youden" and positive_class is not None:
        ev = evaluate(model, val, device, amp is not None)
        threshold = choose_threshold(ev.labels == positive_class, ev.probs[:, positive_class])
    steady = epoch_times[1:] or epoch_times
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=num_classes)
    notes += diagnose(history, None, protocol, len(history) * len(train),
                      bn_momentum=trained_bn_momentum(model),
                      chance=float(counts.max() / max(counts.sum(), 1)))
    return FitResult(
        history=history, best_epoch=best["epoch"], threshold=threshold,
        total_time_s=total_time, first_epoch_s=epoch_times[0],
        epoch_time_s=float(np.mean(steady)), amp=amp, notes=notes, speed=speed,
    )


def trained_bn_momentum(model: nn.Module) -> float | None:
    """The smallest running-statistics momentum among the BatchNorm layers that train (a
    frozen backbone's do not), or None when there are none."""
    momenta = [m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and m.momentum is not None
               and any(p.requires_grad for p in m.parameters(recurse=False))]
    return min(momenta) if momenta else None


class _Stepper:
    """One optimisation step; decides whether (and then runs) the compiled forward/backward.

    Only full batches run compiled: the last, smaller batch of an epoch would otherwise cost a
    second compile for a different shape. Returns the detached loss and the logits.
    """

    def __init__(self, model: nn.Module, protocol: Protocol, device: torch.device, amp: bool,
                 weight: torch.Tensor | None, penalty: _Penalty | None,
                 opt: torch.optim.Optimizer, sched: Any, notes: list[str],
                 speed: dict[str, Any],
                 teacher: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> None:
        self.model, self.protocol, self.device, self.amp = model, protocol, device, amp
        self.teacher = teacher
        self.weight, self.penalty, self.opt, self.sched = weight, penalty, opt, sched
        self.notes, self.speed = notes, speed
        self.compiled: nn.Module | None = None
        self.compiled_mode = "off"
        self.first_compiled = False
        self.batch_size = protocol.batch_size
        self.done = 0
        self.probe: list[float] = []
        self.mode = protocol.compile
        if self.mode != "off":
            blocker = _compile_blocker(device, model)
            if blocker is None and self.mode == "auto" and device.type != "cpu":
                blocker = "auto compiles on the CPU only until GPU timings are in"
            if blocker is not None:
                if self.mode != "auto":
                    raise TrialError(f"compile={self.mode!r}: {blocker}")
                self.mode = "off"
            elif self.mode != "auto":
                self._compile(self.mode)

    def _compile(self, mode: str) -> None:
        # A study compiles one model per trial in one process; the shared forward code would
        # pass dynamo's recompile limit (8) after a few models and then run eagerly without a
        # word. Earlier trials' graphs are not needed again (inductor's disk cache still
        # speeds up recompiling the same graph).
        torch.compiler.reset()
        # dynamic=False: one graph for the one full-batch shape, no symbolic-shape guards.
        # torch.compile of a module returns the (optimized) module; its stubs say callable.
        self.compiled = cast(nn.Module, torch.compile(self.model, mode=mode, dynamic=False))
        self.compiled_mode = mode
        self.first_compiled = True

    def _run(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        soft = None
        if self.teacher is not None:
            with autocast(self.device, self.amp):
                soft = self.teacher(x, self.protocol.distill_temperature)
        with autocast(self.device, self.amp):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y, weight=self.weight,
                                   label_smoothing=self.protocol.label_smoothing)
            if soft is not None:
                loss = self._distilled(loss, logits.float(), soft)
        total = loss + self.penalty() if self.penalty else loss
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.sched.step()
        return loss.detach(), logits.detach()

    def _distilled(self, hard: torch.Tensor, logits: torch.Tensor,
                   soft: torch.Tensor) -> torch.Tensor:
        """(1 - w) * hard + w * T^2 * KL(teacher_T || student_T): T^2 keeps the soft term's
        gradients on the scale of the hard one's as T grows (Hinton et al. 2015)."""
        t, w = self.protocol.distill_temperature, self.protocol.distill_weight
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
        return (1 - w) * hard + w * t * t * kl

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.done += 1
        full = len(y) == self.batch_size
        if self.compiled is not None and full:
            return self._run_compiled(x, y)
        if self.mode != "auto" or not full:
            return self._run(self.model, x, y)
        # auto: time a few eager steps, then compile if the remaining steps repay it.
        t = time.perf_counter()
        out = self._run(self.model, x, y)
        self.probe.append(time.perf_counter() - t)
        if len(self.probe) == PROBE_STEPS + 1:
            step_s = float(np.median(self.probe[1:]))  # the first step warms allocators
            saving = COMPILE_GAIN * step_s * (total_steps - self.done)
            if saving > COMPILE_COST_S:
                self._compile("default")
            else:
                self.mode = "off"
                self.notes.append(f"compile auto: off (about {saving:.0f}s to gain, "
                                  f"compiling may cost {COMPILE_COST_S:.0f}s)")
        return out

    def _run_compiled(self, x: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.compiled is not None
        if self.compiled_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are done
        if not self.first_compiled:
            return self._run(self.compiled, x, y)
        self.first_compiled = False
        synchronize(self.device)
        t = time.perf_counter()
        try:
            out = self._run(self.compiled, x, y)
        except Exception as e:  # the backend's errors have no common base class
            if self.protocol.compile != "auto":
                raise TrialError(f"torch.compile(mode={self.compiled_mode!r}) failed: "
                                 f"{type(e).__name__}: {e}") from e
            self.compiled, self.mode = None, "off"
            self.notes.append(f"compile auto: torch.compile failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); trained eagerly")
            return self._run(self.model, x, y)
        synchronize(self.device)
        eager = float(np.median(self.probe[1:])) if len(self.probe) > 1 else 0.0
        self.speed["compile"] = self.compiled_mode
        self.speed["compile_s"] = max(time.perf_counter() - t - eager, 0.0)
        self.notes.append(f"torch.compile(mode={self.compiled_mode!r}): "
                          f"{self.speed['compile_s']:.1f}s to compile")
        return out


def _ema(model: nn.Module, decay: float | None) -> Any:
    """An exponential moving average of ``model``'s weights and buffers, or None."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of the state that training can change (skips a frozen backbone's 20M values)."""
    if isinstance(model, ClassifierBase):
        return model.mutable_state()
    return model.state_dict()
