"""CPU precision and layout (`make bench`): our trainer with ``amp: auto`` against a plain fp32
PyTorch loop, per study model and image size, in one run.

``amp: auto`` times fp32 / bf16 autocast x contiguous / channels-last on a few training steps
and keeps the fastest (lightlayers.precision) where the CPU has bf16 units; elsewhere it is
fp32. Per model and size this prints the choice, the candidates' step times, and the epoch
time (train + validation) of our trainer against the plain loop of ``_common.PlainLoop``
(fp32, contiguous, DataLoader), epochs alternating so that other load hits both. The choice
is made in our first epoch, which is a warm-up epoch and not in the ratio; its cost is printed
apart. The chest X-ray set by default; ``--train-images`` shortens the epochs.

    .venv/bin/python benchmarks/bench_precision.py [--sizes 64,128] [--train-images N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from _common import BENCH_DIR, chest, machine, subset, time_model

from lightlayers.config import Protocol
from lightlayers.precision import bf16_units, choices

MODELS = (*(f"study-light-k{k}" for k in range(1, 6)), "study-conv")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="PneumoniaMNIST's 28 px images, 2 models, 96 images: seconds")
    p.add_argument("--sizes", default="64,128", help="image sides in px, comma-separated")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--train-images", type=int, default=None,
                   help="the first N images of each split (default: all)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per contestant")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per contestant")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="where to write the results (default benchmarks/results/precision.json,"
                        " or $OUT/ when set)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 8:
        p.error("--sizes: give image sides of at least 8 px")
    if args.json is None:
        out = os.environ.get("OUT")
        args.json = (Path(out) if out else BENCH_DIR / "results") / "precision.json"
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    models = [m for m in args.models.split(",") if m]
    sizes = [28] if args.smoke else args.sizes
    if args.smoke:
        models = models[:1] + [m for m in models[1:] if m == "study-conv"]
    n = 96 if args.smoke else args.train_images
    result: dict[str, Any] = {
        "suite": "CPU precision", "machine": machine(cpu), "bf16_units": bf16_units(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [], "load_average_start": os.getloadavg()[0],
    }
    print(f"CPU precision: {result['machine']}, bf16 units: {result['bf16_units']}", flush=True)
    start = time.perf_counter()
    for px in sizes:
        ds = subset(chest(px, args.smoke), n)
        for name in models:
            before = set(choices())
            r = time_model(name, ds, cpu, warmup=args.warmup, epochs=1 if args.smoke
                           else args.epochs, protocol=replace(Protocol(), amp="auto"))
            new = [c for k, c in choices().items() if k not in before]
            choice = new[-1] if new else None
            r["chosen"] = choice.chosen.label if choice else "fp32 contiguous"
            r["step_ms"] = choice.step_ms if choice else {}
            r["choose_s"] = choice.seconds if choice else 0.0
            result["rows"].append(r)
            print(f"  {name} {px} px: {r['chosen']}, ours {r['ours_epoch_s']:.3f} s, plain fp32 "
                  f"{r['plain_epoch_s']:.3f} s, ratio {r['ratio']:.3f}", flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    result["wall_s"] = time.perf_counter() - start
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(f"\nepoch time, our trainer (amp: auto) vs a plain fp32 PyTorch loop "
          f"({result['machine']['cpu']}, {result['machine']['torch_threads']} threads, "
          f"bf16 units: {result['bf16_units']})")
    print("| model | px | train images | chosen | ms/step fp32 / fp32 CL / bf16 / bf16 CL "
          "| choice s | ours s/epoch | plain fp32 s/epoch | ratio | load |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    order = ("fp32 contiguous", "fp32 channels_last", "bf16 contiguous", "bf16 channels_last")
    for r in rows:
        ms = " / ".join(f"{r['step_ms'][k]:.0f}" if k in r["step_ms"] else "-" for k in order)
        print(f"| {r['model']} | {r['image_size']} | {r['train_images']} | {r['chosen']} | {ms} "
              f"| {r['choose_s']:.1f} | {r['ours_epoch_s']:.3f} | {r['plain_epoch_s']:.3f} "
              f"| {r['ratio']:.3f} | {r['load_average'][0]:.1f}-{r['load_average'][1]:.1f} |")
    print(f"load average {result['load_average_start']:.2f} at the start, "
          f"{result['load_average_end']:.2f} at the end (1-minute); {result['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
