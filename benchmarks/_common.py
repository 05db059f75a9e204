"""Shared parts of bench_cpu.py and bench_gpu.py: the contestants, timing and the output.

Each study model is trained by our trainer (``lightlayers.train.fit`` on ``DeviceLoader``
batches, as ``lightlayers run`` does) and by :func:`plain_epoch`, the loop a typical PyTorch
user writes: a ``DataLoader`` over a ``TensorDataset`` of float32 normalised images, shuffled,
batch 64, fp32, ``loss.item()`` logged every step, a validation pass every epoch. Both train
the same model on the same images; their epochs alternate in one process (ours, plain, ours,
plain, ...) so that other load on the machine hits both alike.

Run as a script only by the benchmarks themselves (``_common.py study JSON``): the whole-study
timing runs in a child process so that its peak memory is its own.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightlayers.environment import cpu_name

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # bench_data sits next to this file

import bench_data  # noqa: E402  (after the path it lives on)

from lightlayers.config import Protocol, StudyConfig  # noqa: E402
from lightlayers.data import Dataset, DeviceLoader, Split, load_dataset  # noqa: E402
from lightlayers.layers import LightConv2d, light_penalty  # noqa: E402
from lightlayers.layers.light_conv import Impl  # noqa: E402
from lightlayers.models import create_model, model_info  # noqa: E402
from lightlayers.train import TensorLoader, fit, synchronize  # noqa: E402

# The shared chest X-ray archive; LIGHTLAYERS_CHEST_TAR points elsewhere (another machine).
if os.environ.get("LIGHTLAYERS_CHEST_TAR"):
    bench_data.CHEST_TAR = Path(os.environ["LIGHTLAYERS_CHEST_TAR"]).resolve()
CHEST_TAR = bench_data.CHEST_TAR
PNEUMONIA_NPZ = CHEST_TAR.parent / "pneumoniamnist_28_reconstructed.npz"
LIGHT_MODELS = tuple(f"study-light-k{k}" for k in range(1, 6))
TRANSFER = "transfer-inception_v3"
STUDY_MODELS = (*LIGHT_MODELS, "study-conv", TRANSFER)


# ----------------------------------------------------------------------------- machine


cpu_model = cpu_name  # one definition, shared with the results' environment


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def load_average() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- data


def chest(size: int, smoke: bool) -> Dataset:
    """The chest X-ray set at ``size`` px (decoded once into the cache). ``smoke``: the
    28 px PneumoniaMNIST copy of the same patients, which loads in a second."""
    src = PNEUMONIA_NPZ if smoke else CHEST_TAR
    return load_dataset(src, size=size, progress=False)


def subset(ds: Dataset, n: int | None) -> Dataset:
    """The first ``n`` images of every split (smoke runs)."""
    if n is None:
        return ds
    splits = {k: Split(s.images[:n], s.labels[:n], None if s.ids is None else s.ids[:n])
              for k, s in ds.splits.items()}
    return replace(ds, splits=splits)


def loader_options(model: nn.Module, data_chans: int) -> dict[str, Any]:
    """What ``lightlayers run`` feeds this model (3 channels, ImageNet statistics for
    backbones); the plain loop gets the same images as float32."""
    info, pre = model.model_info, model.preprocess
    opts: dict[str, Any] = {}
    if pre.mean is not None and pre.std is not None:
        opts["mean"], opts["std"] = list(pre.mean), list(pre.std)
    if info.in_chans == 3 and data_chans == 1:
        opts["out_chans"] = 3
    return opts


def float_images(split: Split, opts: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as a typical user holds it: float32 (N, C, H, W) normalised, int64 labels."""
    x = torch.from_numpy(np.array(split.images)).float().div_(255)  # a copy: the cache is read-only
    if opts.get("out_chans", x.shape[1]) != x.shape[1]:
        x = x.expand(-1, opts["out_chans"], -1, -1).contiguous()
    if "mean" in opts:
        mean = torch.tensor(opts["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(opts["std"]).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x, torch.tensor(np.asarray(split.labels), dtype=torch.int64)


def mini_chest_tar(dst: Path, per_folder: int = 12) -> Path:
    """A small archive in the chest tar's layout (the first images of each class folder), so
    a smoke run exercises the data benchmark in seconds."""
    out = dst / "chest_xray_224.tar.gz"
    counts: dict[str, int] = {}
    with tarfile.open(CHEST_TAR) as src, tarfile.open(out, "w:gz") as dst_tar:
        for member in src:
            if not member.isfile():
                continue
            folder = str(Path(member.name).parent)
            if counts.get(folder, 0) >= per_folder:
                continue
            counts[folder] = counts.get(folder, 0) + 1
            data = src.extractfile(member)
            assert data is not None
            dst_tar.addfile(member, io.BytesIO(data.read()))
    return out


# ----------------------------------------------------------------------------- contestants


def new_model(name: str, seed: int, weights: str | None) -> nn.Module:
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"weights": weights} if model_info(name).extra.get("takes_weights") \
        else {}
    return create_model(name, num_classes=2, in_chans=3, **kw)


@dataclass
class PlainLoop:
    """The loop of a typical PyTorch user, one epoch per call (train, then validate)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    device: torch.device
    penalty: bool
    best_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] | None = None
    log: list[float] = field(default_factory=list)

    @classmethod
    def build(cls, model: nn.Module, ds: Dataset, device: torch.device,
              batch: int) -> PlainLoop:
        opts = loader_options(model, ds.in_chans)
        tr = torch.utils.data.TensorDataset(*float_images(ds.splits["train"], opts))
        va = torch.utils.data.TensorDataset(*float_images(ds.splits["val"], opts))
        model.to(device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                               eps=1e-7)
        return cls(model, opt, torch.utils.data.DataLoader(tr, batch_size=batch, shuffle=True),
                   torch.utils.data.DataLoader(va, batch_size=batch), device,
                   penalty=any(isinstance(m, LightConv2d) for m in model.modules()))

    def epoch(self) -> float:
        """Seconds for one epoch, device synchronised (``.item()`` does that anyway)."""
        synchronize(self.device)
        t = time.perf_counter()
        model, opt, dev = self.model, self.opt, self.device
        model.train()
        correct = total = 0
        for x, y in self.train:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            if self.penalty:  # the study's L2 on LightConv2d kernels, as our trainer adds it
                loss = loss + light_penalty(model)
            loss.backward()
            opt.step()
            self.log.append(loss.item())
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        model.eval()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for x, y in self.val:
                x, y = x.to(dev), y.to(dev)
                out = model(x)
                val_loss += F.cross_entropy(out, y, reduction="sum").item()
                val_correct += (out.argmax(1) == y).sum().item()
        if val_loss < self.best_loss:  # keep the best weights, as the study does
            self.best_loss = val_loss
            self.best_state = copy.deepcopy(model.state_dict())
        synchronize(self.device)
        return time.perf_counter() - t


class _Enough(Exception):
    """Raised from fit's epoch callback once the timed epochs are done."""


def time_model(name: str, ds: Dataset, device: torch.device, *, warmup: int, epochs: int,
               planned_epochs: int = 20, batch: int = 64, weights: str | None = "none",
               protocol: Protocol | None = None) -> dict[str, Any]:
    """Epoch times of our trainer and of the plain loop on one model, epochs interleaved.

    Our trainer is given the study's ``planned_epochs`` (its "auto" choices, such as whether
    compiling pays off, depend on them) and stopped after ``warmup + epochs``. The first
    ``warmup`` epochs of each (allocators, cuDNN autotuning, compiling) are reported apart; the
    ratio uses the medians of the next ``epochs``. For the frozen-backbone transfer model our
    trainer computes the backbone features once (``feature_s``, timed apart) and trains the
    head on them, as ``lightlayers run`` does; the plain loop runs the backbone on every batch.
    """
    total = warmup + epochs
    load_before = load_average()
    proto = replace(protocol or Protocol(), epochs=max(planned_epochs, total), batch_size=batch)
    ours_model = new_model(name, 0, weights).to(device)
    plain = PlainLoop.build(new_model(name, 0, weights), ds, device, batch)
    opts = loader_options(ours_model, ds.in_chans)
    train_ld: Any = DeviceLoader(ds.splits["train"], batch, device, shuffle=True, **opts)
    val_ld: Any = DeviceLoader(ds.splits["val"], batch, device, **opts)
    trainee: nn.Module = ours_model
    feature_s = None
    if ours_model.frozen:
        from lightlayers.features import compute_features

        synchronize(device)
        t = time.perf_counter()
        feats = {k: compute_features(ours_model.backbone, ld, device, False)
                 for k, ld in (("train", train_ld), ("val", val_ld))}
        synchronize(device)
        feature_s = time.perf_counter() - t
        trainee = ours_model.feature_head()
        train_ld = TensorLoader(*feats["train"], batch, shuffle=True)
        val_ld = TensorLoader(*feats["val"], batch)

    rows: list[dict[str, Any]] = []
    plain_times: list[float] = []

    def after_our_epoch(row: dict[str, Any]) -> None:
        # fit() stops its epoch clock before calling this, so the plain epoch is not counted
        # in ours; this alternates the two contestants epoch by epoch.
        rows.append(row)
        plain_times.append(plain.epoch())
        if len(rows) == total:
            raise _Enough

    with contextlib.suppress(_Enough):
        fit(trainee, train_ld, val_ld, proto, device,
            train_labels=np.asarray(ds.splits["train"].labels), num_classes=2,
            on_epoch=after_our_epoch)
    ours_times = [r["time_s"] for r in rows]
    ours = statistics.median(ours_times[warmup:])
    plain_s = statistics.median(plain_times[warmup:])
    # Each of our epochs against the plain epoch right after it (the same load on the machine),
    # then the median of those ratios: one disturbed epoch moves it little.
    pairs = [o / p for o, p in zip(ours_times[warmup:], plain_times[warmup:], strict=True)]
    compile_s = next((r["compile_s"] for r in rows if "compile_s" in r), None)
    out: dict[str, Any] = {
        "model": name, "image_size": ds.image_size, "train_images": len(ds.splits["train"]),
        "val_images": len(ds.splits["val"]), "batch": batch, "timed_epochs": epochs,
        "planned_epochs": proto.epochs,
        "ours_epoch_s": ours, "plain_epoch_s": plain_s, "ratio": statistics.median(pairs),
        "epoch_ratios": pairs,
        "ours_warmup_epoch_s": ours_times[:warmup], "plain_warmup_epoch_s": plain_times[:warmup],
        "ours_epochs_s": ours_times[warmup:], "plain_epochs_s": plain_times[warmup:],
        "compiled": bool(rows[-1].get("compiled")), "compile_s": compile_s,
        "load_average": [load_before, load_average()],  # 1-minute, before and after
        "protocol": {"amp": proto.amp, "compile": proto.compile,
                     "memory_format": proto.memory_format},
    }
    if feature_s is not None:
        out["feature_s"] = feature_s
        # Features are computed once per dataset: over a 20-epoch study they add this much.
        out["ratio_with_features_20_epochs"] = (ours + feature_s / 20) / plain_s
    return out


# ----------------------------------------------------------------------------- LightConv2d


def naive_light_conv(cin: int, f: int, ks: int, k: int) -> nn.Module:
    """LightConv2d as a user would write it from the paper: two nn.Conv2d and a ReLU."""
    p = ks // 2
    return nn.Sequential(nn.Conv2d(cin, k, ks, padding=p), nn.ReLU(),
                         nn.Conv2d(k, f, ks, padding=p))


Shape = tuple[int, int, int, int, int]  # c_in, filters, kernel, k, side


def study_layers(size: int, ks: tuple[int, ...] = (1, 3, 5)) -> list[Shape]:
    """The study model's LightConv2d layers for a ``size`` px input."""
    shapes = []
    for k in ks:
        for cin, f, side in ((3, 8, size), (8, 16, size // 2), (16, 32, size // 4)):
            shapes.append((cin, f, 3, k, side))
            shapes.append((cin, f, 1, k, side))
        shapes.append((8, 8, 3, k, size))
    return shapes


def time_light_conv(shapes: list[Shape], device: torch.device,
                    batch: int, rounds: int, channels_last: bool,
                    amp: bool = False, impl: Impl = "auto") -> list[dict[str, Any]]:
    """Forward+backward of LightConv2d (``impl``, default "auto") vs the naive module with the
    same weights, alternated call by call; median milliseconds of ``rounds`` calls each."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for cin, f, ks, k, side in shapes:
        ours = LightConv2d(cin, f, ks, k=k, impl=impl).to(device, memory_format=fmt)
        naive = naive_light_conv(cin, f, ks, k).to(device, memory_format=fmt)
        with torch.no_grad():
            naive[0].weight.copy_(ours.weight1)
            naive[0].bias.copy_(ours.bias1)
            naive[2].weight.copy_(ours.weight2)
            naive[2].bias.copy_(ours.bias2)
        x = torch.randn(batch, cin, side, side, device=device).contiguous(memory_format=fmt)
        x.requires_grad_(cin != 3)  # the first layer's input needs no gradient
        g = torch.randn(batch, f, side, side, device=device).contiguous(memory_format=fmt)

        def call(m: nn.Module, x: torch.Tensor = x, g: torch.Tensor = g) -> Callable[[], None]:
            def run() -> None:
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    y = m(x)
                y.backward(g.to(y.dtype))
            return run

        times: dict[str, list[float]] = {"ours": [], "naive": []}
        contestants = (("ours", call(ours)), ("naive", call(naive)))
        for _, fn in contestants:
            fn()  # warm-up (allocations, autotuning)
        for _ in range(rounds):
            for name, fn in contestants:
                synchronize(device)
                t = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - t)
        o, n = statistics.median(times["ours"]), statistics.median(times["naive"])
        rows.append({"c_in": cin, "filters": f, "kernel": ks, "k": k, "side": side,
                     "batch": batch, "channels_last": channels_last, "amp": amp, "impl": impl,
                     "ours_ms": o * 1e3, "naive_ms": n * 1e3, "ratio": o / n})
    return rows


# ----------------------------------------------------------------------------- data issue


def data_numbers(size: int, batch: int, smoke: bool, workers: int) -> dict[str, Any]:
    """bench_data.py's measurements (cached load, our loader's epoch, ImageFolder decoding
    every epoch) at one size; on a small copy of the archive when ``smoke``."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        real = bench_data.CHEST_TAR
        tar = mini_chest_tar(tmp_path) if smoke else real
        bench_data.CHEST_TAR = tar  # its functions read the archive from this global
        cache_before = os.environ.get("LIGHTLAYERS_CACHE")
        try:
            with tarfile.open(tar) as tf:
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp_path / "extracted", **kw)  # type: ignore[arg-type]
            a = bench_data.ours(size, tmp_path / "cache", batch, 1 if smoke else 5)
            b = bench_data.imagefolder(size, tmp_path / "extracted", batch, workers)
        finally:
            bench_data.CHEST_TAR = real
            if cache_before is None:
                os.environ.pop("LIGHTLAYERS_CACHE", None)
            else:
                os.environ["LIGHTLAYERS_CACHE"] = cache_before
    return {"size": size, "images": a["images"], "cold_load_s": a["cold_load_s"],
            "cached_load_s": a["cached_load_s"], "ours_epoch_s": a["epoch_s"],
            "imagefolder_epoch_s": b["epoch_s"], "imagefolder_workers": workers,
            "speedup": b["epoch_s"] / a["epoch_s"], "archive": "mini" if smoke else "full"}


# ----------------------------------------------------------------------------- whole study


def whole_study(device: str, size: int, transfer_size: int, epochs: int, weights: str | None,
                smoke: bool, models: tuple[str, ...] = STUDY_MODELS) -> dict[str, Any]:
    """``lightlayers run`` on the study's models (1 seed) in a child process: wall time (data
    load, training, evaluation, transfer features, checkpoints) and the child's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        data = smoke_npz(Path(tmp)) if smoke else CHEST_TAR
        spec = {"device": device, "size": size, "transfer_size": transfer_size,
                "epochs": epochs, "weights": weights, "data": str(data),
                "models": list(models), "out": str(Path(tmp) / "run")}
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "study", json.dumps(spec)],
                                stdout=subprocess.PIPE, text=True)
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t
        # communicate() has reaped the child; its peak RSS is the largest among waited-for
        # children so far, so run this before any other child process of the benchmark.
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise RuntimeError(f"the study child failed with exit code {proc.returncode}")
        child = json.loads(stdout.strip().splitlines()[-1])
    return {**child, "process_wall_s": wall, "peak_rss_gib": peak_kib / 2**20,
            "epochs": epochs, "size": size, "transfer_size": transfer_size,
            "weights": weights or "none", "seeds": 1}


def smoke_npz(dst: Path, n: int = 200) -> Path:
    """The first ``n`` images of each split of the 28 px PneumoniaMNIST copy, as one npz: a
    smoke run of the whole study in seconds rather than a minute."""
    out = dst / "pneumoniamnist_smoke.npz"
    with np.load(PNEUMONIA_NPZ) as z:
        np.savez(out, **{k: z[k][:n] for k in z.files})
    return out


def _study_child(spec_json: str) -> None:
    from lightlayers.runfolder.store import ResultsStore
    from lightlayers.study import run_study

    spec = json.loads(spec_json)
    models = tuple(spec["models"])
    sizes = {TRANSFER: spec["transfer_size"]} if TRANSFER in models else {}
    cfg = StudyConfig(
        data=spec["data"], models=models, seeds=(0,),
        epochs=spec["epochs"], size=spec["size"], in_chans=3, sizes=sizes,
        weights=spec["weights"] if TRANSFER in models else None, out=spec["out"], report=False,
        device=spec["device"])
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    outcome = run_study(cfg, progress=False)
    wall = time.perf_counter() - t
    store = ResultsStore(Path(spec["out"]) / "results.db")
    trials = [{k: t[k] for k in ("model", "status", "accuracy", "total_time_s", "epoch_time_s",
                                 "first_epoch_s", "feature_time_s", "error")}
              for t in store.trials()]
    store.close()
    out = {"study_wall_s": wall, "counts": outcome.counts, "trials": trials}
    if spec["device"] == "cuda":
        out["gpu_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(out, default=str))


# ----------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class SuiteDefaults:
    """What differs between the CPU and the GPU suite."""

    size: int
    transfer_size: int
    epochs: int
    transfer_epochs: int
    study: bool
    json: str
    # (label, Protocol changes, models): other settings of our trainer, timed the same way.
    variants: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = ()
    light_conv_amp: tuple[bool, ...] = (False,)
    light_conv_impls: tuple[Impl, ...] = ("auto",)
    light_conv_layouts: tuple[bool, ...] = (False,)  # channels_last or not
    workers: int = 2
    device: str = "auto"


def parse_args(description: str, d: SuiteDefaults, argv: list[str] | None = None) -> Any:
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, 1 epoch, few batches: checks the script end to end")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--size", type=int, default=d.size, help="image side in px")
    p.add_argument("--transfer-size", type=int, default=d.transfer_size,
                   help="InceptionV3's input side in px")
    p.add_argument("--models", default=",".join(STUDY_MODELS))
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per contestant")
    p.add_argument("--epochs", type=int, default=d.epochs, help="timed epochs per contestant")
    p.add_argument("--transfer-epochs", type=int, default=d.transfer_epochs,
                   help="timed epochs for the transfer model (its plain epochs are long)")
    p.add_argument("--planned-epochs", type=int, default=20,
                   help="the run length our trainer plans for (its auto choices use it)")
    p.add_argument("--weights", default="none",
                   help="InceptionV3 weights: none (the default; timing does not depend on "
                        "them and pretrained ones need a download) or DEFAULT")
    study = p.add_mutually_exclusive_group()
    study.add_argument("--study", dest="study", action="store_true", default=d.study,
                       help="time the whole study (7 models x --study-epochs x 1 seed)")
    study.add_argument("--no-study", dest="study", action="store_false")
    p.add_argument("--study-epochs", type=int, default=20)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="ImageFolder DataLoader workers in the data comparison")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the optional variants once this many seconds have passed")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help=f"where to write the results (default {d.json}, or $OUT/ when set)")
    args = p.parse_args(argv)
    if args.json is None:
        out = os.environ.get("OUT")
        args.json = Path(out) / Path(d.json).name if out else BENCH_DIR.parent / d.json
    return args


def resolve_bench_device(name: str) -> tuple[torch.device, str | None]:
    """The device, and a message when CUDA was wanted but is absent (the CPU runs instead)."""
    if name == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if name == "cuda":
        raise SystemExit("--device cuda: no CUDA device is visible")
    return torch.device("cpu"), "no CUDA device found: running the suite on the CPU"


def run_suite(args: Any, d: SuiteDefaults, title: str) -> dict[str, Any]:
    """Every measurement of the issue, in the order that keeps them honest: the whole study
    first (its child's peak memory must not mix with earlier children), then the per-model
    ratios, LightConv2d, the data pipeline and, time allowing, the optional variants."""
    t_start = time.perf_counter()
    device, note = resolve_bench_device(args.device)
    if note:
        print(note, flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    smoke = args.smoke
    size = 32 if smoke else args.size
    transfer_size = 75 if smoke else args.transfer_size
    models = tuple(m for m in args.models.split(",") if m)
    if smoke:
        models = tuple(m for m in models if m in ("study-light-k1", "study-conv", TRANSFER))
    result: dict[str, Any] = {
        "suite": title, "machine": machine(device), "smoke": smoke, "device_note": note,
        "load_average_start": os.getloadavg(), "errors": {},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"{title}: {result['machine']}", flush=True)

    def section(name: str, fn: Callable[[], Any]) -> Any:
        # One failing part must not lose the others' numbers: its error is recorded instead.
        # Past --budget-s a part is skipped (and recorded as such), so the suite ends in time.
        t = time.perf_counter()
        elapsed = t - t_start
        if args.budget_s is not None and elapsed > args.budget_s and name != "whole study":
            result["errors"][name] = (
                f"skipped: {elapsed:.0f} s elapsed, over --budget-s {args.budget_s:.0f}")
            print(f"-- {name}: skipped (over the time budget)", flush=True)
            return None
        print(f"-- {name}", flush=True)
        try:
            value = fn()
        except Exception as e:  # recorded in the JSON and printed; the suite goes on
            result["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"   {name} failed: {type(e).__name__}: {e}", flush=True)
            return None
        print(f"   {name}: {time.perf_counter() - t:.1f} s", flush=True)
        return value

    if args.study:
        study_models = models if smoke else STUDY_MODELS
        if smoke:
            study_models = tuple(m for m in study_models if m != TRANSFER)
        result["study"] = section("whole study", lambda: whole_study(
            device.type, size, transfer_size, 1 if smoke else args.study_epochs, args.weights,
            smoke, study_models))

    n_smoke = 96 if smoke else None
    datasets: dict[int, Dataset] = {}

    def data_at(px: int) -> Dataset:
        if px not in datasets:
            datasets[px] = subset(chest(px, smoke), n_smoke)
        return datasets[px]

    rows = []
    for name in models:
        transfer = name == TRANSFER
        px = transfer_size if transfer else size
        epochs = 1 if smoke else (args.transfer_epochs if transfer else args.epochs)
        r = section(f"epoch times {name}", lambda name=name, px=px, epochs=epochs: time_model(
            name, data_at(px), device, warmup=args.warmup, epochs=epochs,
            planned_epochs=args.planned_epochs, weights=args.weights))
        if r is not None:
            rows.append(r)
            print(f"   {name}: ours {r['ours_epoch_s']:.3f} s, plain {r['plain_epoch_s']:.3f} s,"
                  f" ratio {r['ratio']:.3f}", flush=True)
    result["models"] = rows

    shapes = study_layers(size, (1, 5)) if smoke else study_layers(size)
    rounds = 2 if smoke else 15
    light = []
    # bf16 autocast is what our trainer uses on CUDA only; on the CPU it would time something
    # no run does.
    for amp in (a for a in d.light_conv_amp if not a or device.type == "cuda"):
        for impl in d.light_conv_impls:
            for cl in d.light_conv_layouts:
                got = section(f"LightConv2d {impl} {'bf16' if amp else 'fp32'} "
                              f"{'channels_last' if cl else 'contiguous'}",
                              lambda cl=cl, amp=amp, impl=impl: time_light_conv(
                                  shapes[:4] if smoke else shapes, device, 64, rounds, cl, amp,
                                  impl))
                light += got or []
    result["light_conv"] = light

    data = section(f"data pipeline at {size} px",
                   lambda: data_numbers(size, 64, smoke, 0 if smoke else args.workers))
    result["data"] = [data] if data else []

    variants = []
    for label, changes, names in d.variants:
        for name in names if not smoke else names[:1]:
            if name not in models:
                continue
            if smoke and device.type == "cpu" and changes.get("compile") not in (None, "off",
                                                                                "auto"):
                # Compiling a study model takes 15-40 s on a small CPU: too slow for a smoke run.
                result["errors"][f"variant {label} {name}"] = (
                    "skipped: compiling in a CPU smoke run")
                continue
            proto = replace(Protocol(), **changes)
            r = section(f"variant {label} {name}", lambda name=name, proto=proto: time_model(
                name, data_at(size), device, warmup=args.warmup, epochs=1 if smoke else
                args.epochs, planned_epochs=args.planned_epochs, protocol=proto))
            if r is not None:
                variants.append({"variant": label, "changes": changes, **r})
    result["variants"] = variants
    result["load_average_end"] = os.getloadavg()
    result["load_average"] = (f"{result['load_average_start'][0]:.2f} at the start, "
                              f"{result['load_average_end'][0]:.2f} at the end (1-minute)")
    result["suite_wall_s"] = time.perf_counter() - t_start
    return result


def main(description: str, d: SuiteDefaults, title: str, argv: list[str] | None = None) -> int:
    args = parse_args(description, d, argv)
    torch.set_num_threads(os.cpu_count() or 1)  # threads = cores, for both contestants
    result = run_suite(args, d, title)
    write_json(result, args.json)
    print_tables(result)
    print(f"results: {args.json}  ({result['suite_wall_s']:.0f} s)")
    if result["errors"]:
        print("errors: " + json.dumps(result["errors"], indent=2))
    failed = [k for k in result["errors"] if not result["errors"][k].startswith("skipped")]
    return 1 if failed else 0


# ----------------------------------------------------------------------------- output


def write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = ("channels_last" if r["channels_last"] else "contiguous",
               "bf16" if r["amp"] else "fp32", r["impl"])
        out.setdefault(key, []).append(r)
    return out


def print_tables(result: dict[str, Any]) -> None:
    """The result as plain tables (rich): per-model ratio, LightConv2d ratio, data, study."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpus']} CPUs"
    models = result.get("models", [])
    if models:
        t = Table(title=f"epoch time, our trainer vs a plain PyTorch loop ({where})")
        for col in ("model", "px", "ours s/epoch", "plain s/epoch", "ratio", "ours warm-up s",
                    "compiled", "compile s", "features s", "load"):
            t.add_column(col, justify="right")
        for r in models:
            t.add_row(r["model"], str(r["image_size"]), f"{r['ours_epoch_s']:.3f}",
                      f"{r['plain_epoch_s']:.3f}", f"{r['ratio']:.3f}",
                      ", ".join(f"{v:.2f}" for v in r["ours_warmup_epoch_s"]),
                      "yes" if r["compiled"] else "no",
                      "" if r["compile_s"] is None else f"{r['compile_s']:.1f}",
                      f"{r['feature_s']:.1f}" if "feature_s" in r else "",
                      "-".join(f"{v:.1f}" for v in r["load_average"]))
        console.print(t)
    for key, title in (("light_conv", "LightConv2d forward+backward vs two nn.Conv2d"),):
        rows = result.get(key, [])
        if rows:
            t = Table(title=title)
            for col in ("c_in", "f", "kernel", "k", "side", "layout", "amp", "impl", "ours ms",
                        "naive ms", "ratio"):
                t.add_column(col, justify="right")
            for r in rows:
                t.add_row(str(r["c_in"]), str(r["filters"]), f"{r['kernel']}x{r['kernel']}",
                          str(r["k"]), str(r["side"]),
                          "channels_last" if r["channels_last"] else "contiguous",
                          "bf16" if r["amp"] else "fp32", r["impl"], f"{r['ours_ms']:.2f}",
                          f"{r['naive_ms']:.2f}", f"{r['ratio']:.2f}")
            console.print(t)
            for (layout, amp, impl), group in _groups(rows).items():
                ratios = [r["ratio"] for r in group]
                console.print(
                    f"LightConv2d/naive, {layout}, {amp}, impl {impl}: geometric mean "
                    f"{float(np.exp(np.mean(np.log(ratios)))):.2f}, best {min(ratios):.2f}, "
                    f"worst {max(ratios):.2f} over {len(ratios)} layer shapes")
    variants = result.get("variants", [])
    if variants:
        t = Table(title="other settings of our trainer (same timing; ratio to the plain loop)")
        for col in ("variant", "model", "ours s/epoch", "plain s/epoch", "ratio", "compile s"):
            t.add_column(col, justify="right")
        for r in variants:
            t.add_row(r["variant"], r["model"], f"{r['ours_epoch_s']:.3f}",
                      f"{r['plain_epoch_s']:.3f}", f"{r['ratio']:.3f}",
                      "" if r["compile_s"] is None else f"{r['compile_s']:.1f}")
        console.print(t)
    for d in result.get("data", []):
        console.print(
            f"data at {d['size']} px ({d['archive']} archive, {d['images']} images): cached load "
            f"{d['cached_load_s']:.3f} s (cold {d['cold_load_s']:.1f} s); one epoch: our loader "
            f"{d['ours_epoch_s'] * 1e3:.1f} ms, ImageFolder {d['imagefolder_epoch_s']:.2f} s "
            f"({d['speedup']:.0f}x)")
    s = result.get("study")
    if s:
        line = (f"whole study ({len(s['trials'])} models x {s['epochs']} epochs x 1 seed, "
                f"{s['size']} px, transfer {s['transfer_size']} px, weights {s['weights']}): "
                f"{s['study_wall_s']:.1f} s in run_study, {s['process_wall_s']:.1f} s with "
                f"start-up; peak RSS {s['peak_rss_gib']:.2f} GiB")
        if "gpu_max_allocated_gib" in s:
            line += f", GPU max allocated {s['gpu_max_allocated_gib']:.2f} GiB"
        console.print(line)
    console.print(f"load average: {result['load_average']}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "study":
        _study_child(sys.argv[2])
    else:
        sys.exit("usage: _common.py study JSON (run by the benchmarks)")
