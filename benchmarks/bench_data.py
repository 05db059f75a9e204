"""Data-pipeline cost on the chest X-ray archive: decode-once cache + DeviceLoader versus
torchvision ImageFolder + DataLoader decoding JPEGs every epoch (the original study's approach).

For 224 px and 64 px it measures: the first load (cold cache: a fresh LIGHTLAYERS_CACHE), the
cached load, and one epoch of batch-64 batches over the official train split (5,216 images) on
the CPU from each pipeline, in the same run. Both pipelines give the same tensors: 1 channel,
stretched to size x size, scaled to [0, 1]. Each epoch is timed after one warm-up epoch.

    .venv/bin/python benchmarks/bench_data.py [--sizes 224 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightlayers.data import DeviceLoader, Split, load_dataset
from lightlayers.data import preprocess as pre

CHEST_TAR = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "chest_xray_pneumonia"
    / "chest_xray_224.tar.gz"
)


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _epoch(loader: Any) -> float:
    t = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - t


def ours(size: int, cache: Path, batch: int, epochs: int) -> dict[str, float]:
    os.environ["LIGHTLAYERS_CACHE"] = str(cache)
    cold, _ = _timed(lambda: load_dataset(CHEST_TAR, size=size, progress=False))
    cached = min(
        _timed(lambda: load_dataset(CHEST_TAR, size=size, progress=False))[0] for _ in range(3)
    )
    ds = load_dataset(CHEST_TAR, size=size, progress=False)
    # The official train split (train + the carved val), as ImageFolder sees it.
    tr, va = ds.splits["train"], ds.splits["val"]
    official = Split(
        np.concatenate([tr.images, va.images]), np.concatenate([tr.labels, va.labels]), None
    )
    loader = DeviceLoader(official, batch, "cpu", shuffle=True)
    _epoch(loader)
    epoch = statistics.median(_epoch(loader) for _ in range(epochs))
    return {"cold_load_s": cold, "cached_load_s": cached, "epoch_s": epoch, "images": len(official)}


def imagefolder(size: int, root: Path, batch: int, workers: int) -> dict[str, float]:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Grayscale(1),
            transforms.Resize((size, size), antialias=True),
            transforms.ToTensor(),
        ]
    )
    data = datasets.ImageFolder(str(root / "chest_xray_224" / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers)
    _epoch(loader)  # warm the page cache
    return {"epoch_s": _epoch(loader), "images": len(data)}


def decode_pools(cache: Path) -> dict[str, float]:
    """Cold decode at 64 px with the process pool (the default) and with threads."""
    out = {}
    real = pre._executor
    for name, make in (("process", real), ("thread", ThreadPoolExecutor)):
        pre._executor = make  # type: ignore[assignment]
        try:
            os.environ["LIGHTLAYERS_CACHE"] = str(cache / name)
            out[f"{name}_pool_cold_s"] = _timed(
                lambda: load_dataset(CHEST_TAR, size=64, progress=False)
            )[0]
        finally:
            pre._executor = real  # type: ignore[assignment]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="ImageFolder DataLoader workers")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs of our loader (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for our loader")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = p.parse_args()
    # One intra-op thread by default: the conversion is memory-bound, and on a shared machine a
    # second thread that is descheduled stalls every small parallel op (seen here: 64 px epochs
    # of 7 ms quiet vs 2.4 s with another process busy). ImageFolder keeps its 2 workers.
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with tarfile.open(CHEST_TAR) as tf:
            # The "data" filter (Python >= 3.11.4) refuses links and paths outside the folder.
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp_path / "extracted", **kw)  # type: ignore[arg-type]
        for size in args.sizes:
            a = ours(size, tmp_path / f"cache{size}", args.batch, args.epochs)
            b = imagefolder(size, tmp_path / "extracted", args.batch, args.workers)
            rows[str(size)] = {
                **{f"ours_{k}": v for k, v in a.items()},
                "imagefolder_epoch_s": b["epoch_s"],
                "epoch_speedup": b["epoch_s"] / a["epoch_s"],
            }
            assert a["images"] == b["images"], (a, b)
        pools = decode_pools(tmp_path / "pools")

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        # Other work on the machine skews every number here; the load average shows it.
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "source": str(CHEST_TAR.resolve()),
        "batch": args.batch,
        "torch_threads": args.threads,
        "imagefolder_workers": args.workers,
        "sizes": rows,
        "decode_64px": pools,
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chest X-ray data pipeline ({result['machine']})")
    for col in ("size", "cold load", "cached load", "our epoch", "ImageFolder epoch", "speedup"):
        table.add_column(col, justify="right")
    for size, r in rows.items():
        table.add_row(
            f"{size} px",
            f"{r['ours_cold_load_s']:.2f} s",
            f"{r['ours_cached_load_s']:.3f} s",
            f"{r['ours_epoch_s'] * 1000:.1f} ms",
            f"{r['imagefolder_epoch_s']:.2f} s",
            f"{r['epoch_speedup']:.0f}x",
        )
    console = Console()
    console.print(table)
    console.print(
        f"cold decode at 64 px: process pool {pools['process_pool_cold_s']:.2f} s, "
        f"thread pool {pools['thread_pool_cold_s']:.2f} s; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
