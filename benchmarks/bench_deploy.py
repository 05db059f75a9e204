"""Deployment benchmark: per model, the ONNX fp32 and int8 file sizes, and ONNX Runtime's CPU
batch-1 latency (median, p95) and images/s at batch 64 beside PyTorch's, with the ratio
onnxruntime/PyTorch.

Each model is exported as ``lightlayers export`` does it (the same module: probabilities and
Grad-CAM maps; int8 by static quantization calibrated on training images), and the three
contestants (PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8) run the same real images
with the same number of threads, their calls alternating so that other load on the machine
hits all alike (:mod:`lightlayers.deploy.bench`). Timing does not depend on the weights, so by
default the models are untrained (BatchNorm statistics from a few real batches); ``--run``
times the trained trials of a run folder instead (each model's best on validation).

    .venv/bin/python benchmarks/bench_deploy.py [--run RUN_DIR] [--models M1,M2]
        [--size PX] [--threads N] [--budget-s S] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lightlayers as L
from lightlayers.data import DeviceLoader, DuplicateImagesWarning, Split, load_dataset
from lightlayers.deploy.bench import deployment_metrics
from lightlayers.environment import cpu_name
from lightlayers.models import model_info

BENCH_DIR = Path(__file__).resolve().parent
PNEUMONIA_NPZ = (BENCH_DIR.parent.parent / "shared" / "data" / "chest_xray_pneumonia"
                 / "pneumoniamnist_28_reconstructed.npz")
MODELS = (*(f"study-light-k{k}" for k in range(1, 6)), "study-conv")
BATCH = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="time the trained trials of this run folder")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated models (default: the study's small models; with "
                        "--run: every model of the run)")
    p.add_argument("--data", default=str(PNEUMONIA_NPZ),
                   help="images for calibration and timing (untrained models only)")
    p.add_argument("--size", type=int, default=28, help="input side in px (untrained models)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of both PyTorch and ONNX Runtime (default: all cores)")
    p.add_argument("--budget-s", type=float, default=4.0,
                   help="seconds of timing per model (half latency, half throughput)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write the results here too (default: $OUT/deploy.json when OUT is set)")
    args = p.parse_args(argv)
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "deploy.json"
    return args


def untrained(name: str, ds: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A fresh model (BatchNorm statistics from real batches) and its loader options."""
    torch.manual_seed(0)
    kw = {"weights": None} if model_info(name).extra.get("takes_weights") else {}
    model = L.create_model(name, num_classes=len(ds.classes), **kw)
    opts: dict[str, Any] = {}
    if model.preprocess.mean is not None and model.preprocess.std is not None:
        opts["mean"], opts["std"] = list(model.preprocess.mean), list(model.preprocess.std)
    if model.model_info.in_chans != ds.in_chans:
        opts["out_chans"] = model.model_info.in_chans
    model.train()
    with torch.no_grad():
        for x, _ in DeviceLoader(Split(ds.splits["train"].images[:4 * BATCH],
                                       ds.splits["train"].labels[:4 * BATCH], None),
                                 BATCH, "cpu", **opts):
            model(x)
    return model.eval(), opts


def trained(run_dir: Path, names: list[str] | None) -> list[tuple[str, torch.nn.Module,
                                                                  dict[str, Any], Any]]:
    """Each model's trial of ``run_dir`` that `lightlayers export` would choose."""
    from lightlayers.deploy.trial import trial_card
    from lightlayers.runfolder.trials import choose_trial, find_trials

    models = names or sorted({t.model_name for t in find_trials(run_dir)})
    out = []
    for name in models:
        trial, _, _ = choose_trial(run_dir, name)
        model = trial.build_model()
        out.append((name, model, trial_card(trial, model).loader_options(), trial.load_data()))
    return out


def bench_one(name: str, model: torch.nn.Module, opts: dict[str, Any], ds: Any,
              budget_s: float, threads: int) -> dict[str, Any]:
    t = time.perf_counter()
    m = deployment_metrics(model, ds.splits["train"], ds.splits["test"], opts, budget_s,
                           threads, batch=BATCH)
    return {
        "model": name, "px": int(opts.get("crop") or ds.image_size),
        "params_total": L.count_params(model).total, **m,
        "export_and_timing_s": time.perf_counter() - t,
        "ratio_latency_ort_torch": m["ort_latency_ms"] / m["torch_cpu_latency_ms"],
        "ratio_img_s_ort_torch": m["ort_img_s"] / m["torch_cpu_img_s"],
        "ratio_latency_int8_torch": m["ort_int8_latency_ms"] / m["torch_cpu_latency_ms"],
        "ratio_img_s_int8_torch": m["ort_int8_img_s"] / m["torch_cpu_img_s"],
    }


def print_table(rows: list[dict[str, Any]], threads: int) -> None:
    print(f"\nCPU inference ({cpu_name()}, {threads} thread(s)); latency = batch 1, median / "
          f"p95 ms; img/s at batch {BATCH}; ratio = onnxruntime / PyTorch")
    head = (f"{'model':22s} {'px':>4s} {'fp32 kB':>8s} {'int8 kB':>8s} | "
            f"{'torch ms':>13s} {'ort ms':>13s} {'int8 ms':>13s} {'ratio':>6s} | "
            f"{'torch img/s':>11s} {'ort img/s':>10s} {'int8 img/s':>10s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    def ms(r: dict[str, Any], k: str) -> str:
        return f"{r[k + '_latency_ms']:.2f} / {r[k + '_latency_p95_ms']:.2f}"

    for r in rows:
        print(f"{r['model']:22s} {r['px']:4d} {r['onnx_fp32_mb'] * 1e3:8.1f} "
              f"{r['onnx_int8_mb'] * 1e3:8.1f} | {ms(r, 'torch_cpu'):>13s} {ms(r, 'ort'):>13s} "
              f"{ms(r, 'ort_int8'):>13s} {r['ratio_latency_ort_torch']:6.2f} | "
              f"{r['torch_cpu_img_s']:11.0f} {r['ort_img_s']:10.0f} "
              f"{r['ort_int8_img_s']:10.0f} {r['ratio_img_s_ort_torch']:6.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Known and irrelevant to timing: duplicate images in the data, study-conv zero-padding
    # inputs below 50 px.
    warnings.simplefilter("ignore", DuplicateImagesWarning)
    warnings.filterwarnings("ignore", message=r".*zero-padding it")
    names = [m for m in args.models.split(",") if m]
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    if args.run is not None:
        given = names if args.models != ",".join(MODELS) else None
        contestants = trained(args.run, given)
    else:
        ds = load_dataset(args.data, size=args.size, progress=False)
        contestants = [(n, *untrained(n, ds), ds) for n in names]
    rows = []
    for name, model, opts, ds in contestants:
        print(f"-- {name}", flush=True)
        rows.append(bench_one(name, model, opts, ds, args.budget_s, args.threads))
    result = {"machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average": load_start},
              "run": None if args.run is None else str(args.run), "models": rows,
              "wall_s": time.perf_counter() - t0}
    print_table(rows, args.threads)
    load = os.getloadavg()[0]
    print(f"load average (1 min): {result['machine']['load_average'][0]:.2f} at the start, "
          f"{load:.2f} at the end; other processes on the cores distort PyTorch's threads "
          "most (use --threads 1 on a shared machine)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
