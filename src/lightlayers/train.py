"""Training one model on one dataset under one protocol: ``fit`` and ``evaluate``.

Knows nothing of the results store: it returns numbers, the runner records them. Loss and
accuracy are accumulated on the device and read once per epoch, so there is no host sync per
step; times are wall clock with the device synchronised at epoch boundaries.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightlayers.config import Protocol
from lightlayers.layers import light_penalty
from lightlayers.metrics import choose_threshold


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
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def amp_in_use(device: torch.device, protocol: Protocol) -> str | None:
    """The reduced precision actually used ('bf16') or None; recorded with each trial."""
    if protocol.amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return None


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    labels: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, amp: bool = False) -> EvalResult:
    """Mean cross-entropy, accuracy, labels and softmax probabilities over ``loader``."""
    model.eval()
    losses, probs, labels = [], [], []
    for x, y in loader:
        with autocast(device, amp):
            logits = model(x)
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
) -> FitResult:
    """Train ``model`` in place and leave it holding the weights the protocol selects.

    ``train``/``val`` yield ``(inputs, labels)`` already on ``device`` (images, or cached
    backbone features when ``model`` is a head). The selected weights (best validation loss by
    default) are restored at the end; the decision threshold, if the protocol asks for one, is
    chosen on validation only.
    """
    from sklearn.metrics import roc_auc_score

    amp = amp_in_use(device, protocol)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrialError("the model has no trainable parameters")
    if hasattr(model, "param_groups"):  # fine-tuned backbones learn at a lower rate
        params: Any = model.param_groups(protocol.lr, protocol.backbone_lr_scale)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    optim_cls = torch.optim.AdamW if protocol.optimizer == "adamw" else torch.optim.Adam
    opt = optim_cls(params, lr=protocol.lr, eps=protocol.adam_eps,
                    weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(protocol, len(train)))
    weight = class_weights(train_labels, num_classes).to(device) if protocol.class_weighting \
        else None
    use_l2 = protocol.light_l2
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
            with autocast(device, amp is not None):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, weight=weight,
                                       label_smoothing=protocol.label_smoothing)
            total = loss + light_penalty(model) if use_l2 else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        train_loss = float(loss_sum.item()) / max(seen, 1)  # the one host sync of the epoch
        if not math.isfinite(train_loss):
            raise TrialError(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        ev = evaluate(model, val, device, amp is not None)
        synchronize(device)
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        row: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": float(correct.item()) / seen,
            "val_loss": ev.loss, "val_acc": ev.accuracy, "lr": lr, "time_s": dt,
        }
        if positive_class is not None and len(np.unique(ev.labels)) == 2:
            row["val_auc"] = float(roc_auc_score(ev.labels == positive_class,
                                                 ev.probs[:, positive_class]))
        if not math.isfinite(ev.loss):
            raise TrialError(f"non-finite validation loss in epoch {epoch}")
        if _better(protocol.select, row, best):
            best = row
            best_state = {k: v.detach().clone() for k, v in _mutable_state(model).items()}
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
    return FitResult(
        history=history, best_epoch=best["epoch"], threshold=threshold,
        total_time_s=total_time, first_epoch_s=epoch_times[0],
        epoch_time_s=float(np.mean(steady)), amp=amp,
    )


def _mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of the state that training can change (skips a frozen backbone's 20M values)."""
    frozen = getattr(model, "frozen", False) and hasattr(model, "head")
    state = model.state_dict()
    if frozen:
        return {k: v for k, v in state.items() if k.startswith("head.")}
    return state
