"""Precision and layout on the CPU: ``amp: auto`` and ``memory_format: auto`` by measurement.

On a CPU with bf16 units (AMX or AVX512-BF16) bf16 autocast and channels-last can make a
training step several times faster or slower depending on the model and the image size
(docs/performance.md), so "auto" times the candidates (fp32 / bf16 autocast x contiguous /
channels-last) on a few real training steps of a copy of the model and keeps the fastest. On a
CPU without bf16 units bf16 is emulated and slow: "auto" is fp32 there, without timing.

A choice is cached per (model, input size, batch, threads, CPU, candidates) for the process,
so a study times each model and size once, not once per seed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# x86 feature flags of /proc/cpuinfo that mean native bf16 arithmetic (oneDNN uses both).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
WARMUP_ROUNDS = 1  # per candidate, untimed: oneDNN builds its kernels on first use
TIMED_ROUNDS = 3  # per candidate; the median is compared


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ``flags`` of /proc/cpuinfo's text (the first processor's)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_units(flags: Iterable[str] | None = None) -> str | None:
    """The CPU's bf16 unit ("amx_bf16" or "avx512_bf16"), or None when it has none.

    ``flags``: CPU feature flags as /proc/cpuinfo lists them; None reads this machine's
    (torch's own CPU probe where /proc/cpuinfo cannot be read)."""
    if flags is None:
        try:
            flags = cpu_flags(Path("/proc/cpuinfo").read_text())
        except OSError:
            flags = set()
            if hasattr(torch.cpu, "_is_amx_tile_supported") and torch.cpu._is_amx_tile_supported():
                flags.add("amx_bf16")
            if hasattr(torch.cpu, "_is_avx512_bf16_supported") and \
                    torch.cpu._is_avx512_bf16_supported():
                flags.add("avx512_bf16")
    have = set(flags)
    return next((f for f in BF16_FLAGS if f in have), None)


@dataclass(frozen=True)
class Candidate:
    bf16: bool
    channels_last: bool

    @property
    def label(self) -> str:
        return (f"{'bf16' if self.bf16 else 'fp32'} "
                f"{'channels_last' if self.channels_last else 'contiguous'}")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def cpu_candidates(amp: Any, memory_format: str, units: str | None
                   ) -> tuple[list[Candidate], str | None]:
    """What ``amp`` / ``memory_format`` leave to time on a CPU with ``units`` (bf16_units),
    and why nothing is timed when the list has one entry.

    ``memory_format: auto`` is timed only together with ``amp: auto``: with amp fixed it keeps
    its earlier meaning (contiguous), so configurations written before "auto" existed train
    as they did."""
    if amp == "auto" and units is None:
        return [Candidate(False, memory_format == "channels_last")], (
            "fp32: this CPU has no bf16 units (AMX or AVX512-BF16), where bf16 is emulated")
    precisions = [False, True] if amp == "auto" else [amp == "bf16"]
    if memory_format == "auto" and amp == "auto":
        layouts = [False, True]
    else:
        layouts = [memory_format == "channels_last"]
    out = [Candidate(p, cl) for p in precisions for cl in layouts]
    return out, (None if len(out) > 1 else "one candidate")


def model_signature(model: nn.Module) -> str:
    """The model's class and every parameter's name, shape and trainability: two models with
    the same signature do the same arithmetic per step."""
    parts = [type(model).__name__] + [
        f"{n}:{tuple(p.shape)}:{int(p.requires_grad)}" for n, p in model.named_parameters()]
    return "|".join(parts)


def choice_key(model: nn.Module, input_shape: tuple[int, ...], batch: int, threads: int,
               cpu: str, candidates: Iterable[Candidate], extra: tuple[Any, ...] = ()
               ) -> tuple[Any, ...]:
    """The cache key of a timed choice. ``input_shape``: one image's (C, H, W); ``extra``:
    other things that change a step's cost (an L2 term, a teacher)."""
    return (model_signature(model), tuple(input_shape), batch, threads, cpu,
            tuple(c.label for c in candidates), extra)


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    step_ms: dict[str, float]  # median milliseconds per training step, per candidate label
    rounds: int
    seconds: float  # what timing the candidates cost, copies and warm-up included

    def record(self, cached: bool) -> dict[str, Any]:
        return {"chosen": self.chosen.label, "step_ms": dict(self.step_ms),
                "timed_steps": self.rounds, "cached": cached,
                "choose_s": 0.0 if cached else round(self.seconds, 2)}


_CHOICES: dict[tuple[Any, ...], Choice] = {}


def cached_choice(key: tuple[Any, ...]) -> Choice | None:
    return _CHOICES.get(key)


def choices() -> dict[tuple[Any, ...], Choice]:
    """The choices timed in this process so far, oldest first."""
    return dict(_CHOICES)


def forget_choices() -> None:
    """Drop every cached choice (a benchmark timing the choice itself)."""
    _CHOICES.clear()


def time_candidates(candidates: list[Candidate],
                    make_step: Callable[[Candidate], Callable[[], None]],
                    key: tuple[Any, ...] | None = None,
                    rounds: int = TIMED_ROUNDS) -> Choice:
    """The fastest of ``candidates`` by the median of ``rounds`` timed steps each.

    ``make_step(c)`` prepares candidate ``c`` (its own copy of the model and optimizer) and
    returns one training step. Candidates take turns step by step, so that other load on
    the machine hits them alike. Stored under ``key`` when given."""
    start = time.perf_counter()
    steps = [make_step(c) for c in candidates]
    times: list[list[float]] = [[] for _ in candidates]
    for r in range(WARMUP_ROUNDS + rounds):
        for i, step in enumerate(steps):
            t = time.perf_counter()
            step()
            if r >= WARMUP_ROUNDS:
                times[i].append(time.perf_counter() - t)
    medians = [statistics.median(t) * 1e3 for t in times]
    best = min(range(len(candidates)), key=lambda i: medians[i])
    choice = Choice(candidates[best], {c.label: round(m, 2) for c, m in
                                       zip(candidates, medians, strict=True)}, rounds,
                    time.perf_counter() - start)
    if key is not None:
        _CHOICES[key] = choice
    return choice
