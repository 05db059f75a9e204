"""Time and peak memory of loading image folders of growing size, cold and warm.

For each folder size it writes synthetic JPEG files (smooth random images, RGB unless
``--grey``) into ``ROOT/{train,test}/{a,b}/`` (no val folder: val is carved out of train, so the
training split is not one run of the cache file, the case that used to be copied), then
measures in a child process per measurement:

- ``lightlayers data summary --size SIDE``: cold (a fresh ``LIGHTLAYERS_CACHE``) and warm;
- reading every split once at SIDE px as training does (``load_dataset`` then
  ``DeviceLoader`` batches of 64 on the CPU, shuffled): the data path of an epoch without the
  model, so that its peak shows what the decoded images themselves cost; cold and warm;
- ``lightlayers run`` of one model for one epoch (``--threads 1``, batch 64, no report) at
  ``--run-size`` px: cold (fresh cache) and warm (the cache from the cold run, a new run folder).

Peak RSS is the child's ``ru_maxrss`` (the largest of the command's process and its decoding
workers), read by a wrapper process through ``resource.getrusage(RUSAGE_CHILDREN)`` so that one
measurement's peak never hides behind another's. The decoded size is N x C x side x side bytes;
the table gives peak RSS minus the import baseline (a child importing torch and lightlayers's
command line, measured the same way) as a multiple of it, and whether the peak is within
1.3 x the decoded size + 1 GiB.

    .venv/bin/python benchmarks/bench_scale.py [--sets 1000:224 10000:224 50000:224 100000:64]
        [--run-size 64] [--no-run] [--grey] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LIGHTLAYERS = [sys.executable, "-c", "from lightlayers.cli import main; raise SystemExit(main())"]
READ_SPLITS = [sys.executable, "-c", """
import sys
from lightlayers.data import DeviceLoader, load_dataset
ds = load_dataset(sys.argv[1], size=int(sys.argv[2]), progress=False)
for split in ds.splits.values():
    for x, y in DeviceLoader(split, 64, "cpu", shuffle=True):
        pass
"""]

# The wrapper: run the command, then print its exit status, wall time and peak RSS (bytes).
_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - t
rc = r.returncode
if rc:
    sys.stderr.write(r.stderr.decode(errors="replace")[-2000:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": rc, "wall_s": wall, "peak": peak}))
"""


def _write_block(args: tuple[Path, int, int, int, bool]) -> int:
    root, start, stop, side, grey = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        split = "test" if i % 5 == 0 else "train"
        d = root / split / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (12, 12) if grey else (12, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR).save(
            d / f"img{i:06d}.jpg", quality=90)
    return stop - start


def make_folder(root: Path, n: int, side: int, grey: bool) -> float:
    """Write ``n`` JPEG files; returns the seconds it took."""
    t = time.perf_counter()
    step = 2000
    jobs = [(root, lo, min(lo + step, n), side, grey) for lo in range(0, n, step)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as ex:
        assert sum(ex.map(_write_block, jobs)) == n
    return time.perf_counter() - t


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], env=env, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} exited with {result['rc']}: "
                         f"{out.stderr[-500:]}")
    return result


def _load() -> float:
    return os.getloadavg()[0]


def run_set(n: int, side: int, args: argparse.Namespace, work: Path, baseline: int
            ) -> list[dict[str, Any]]:
    folder = work / f"images-{n}-{side}"
    made = make_folder(folder, n, side, args.grey)
    print(f"wrote {n} JPEG files at {side} px in {made:.1f} s", flush=True)
    chans = 1 if args.grey else 3
    rows = []
    plans: list[tuple[str, int, list[str]]] = [
        ("data summary", side,
         [*LIGHTLAYERS, "data", "summary", str(folder), "--size", str(side), "--json"]),
        ("read every split", side, [*READ_SPLITS, str(folder), str(side)])]
    if not args.no_run:
        plans.append(("run, 1 epoch", args.run_size, [
            *LIGHTLAYERS, "run", "--data", str(folder), "--models", args.model, "--epochs", "1",
            "--seeds", "0", "--threads", "1", "--size", str(args.run_size), "--batch-size", "64",
            "--no-report", "--quiet"]))
    for what, size, cmd in plans:
        cache = work / f"cache-{n}-{side}-{size}-{what.split()[0].strip(',')}"
        env = {**os.environ, "LIGHTLAYERS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        for state in ("cold", "warm"):
            full = list(cmd)
            if what.startswith("run"):
                full += ["--out", str(work / f"run-{n}-{side}-{state}")]
            load = _load()
            r = measure(full, env)
            decoded = n * chans * size * size
            row = {"images": n, "side": size, "command": what, "state": state,
                   "decoded_bytes": decoded, "wall_s": round(r["wall_s"], 2),
                   "peak_rss": r["peak"], "over_baseline": r["peak"] - baseline,
                   "ratio": round((r["peak"] - baseline) / decoded, 3), "load": round(load, 1),
                   "within": r["peak"] <= 1.3 * decoded + 2**30}
            rows.append(row)
            print(_line(row), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


HEADER = ("| images | side px | command | cache | decoded MiB | wall s | peak RSS MiB | "
          "(peak - baseline) / decoded | <= 1.3 x decoded + 1 GiB | load |\n"
          "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")


def _line(r: dict[str, Any]) -> str:
    return (f"| {r['images']:,} | {r['side']} | {r['command']} | {r['state']} | "
            f"{_mib(r['decoded_bytes'])} | {r['wall_s']:.1f} | {_mib(r['peak_rss'])} | "
            f"{r['ratio']:.2f} | {'yes' if r['within'] else 'no'} | {r['load']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["1000:224", "10000:224", "50000:224",
                                                 "100000:64"],
                   help="N:SIDE pairs: N images of SIDE x SIDE pixels each")
    p.add_argument("--run-size", type=int, default=64, help="decode size of the one-epoch run")
    p.add_argument("--model", default="study-light-k1")
    p.add_argument("--no-run", action="store_true", help="only `data summary`")
    p.add_argument("--grey", action="store_true", help="grey images (default: RGB)")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--keep", type=Path, help="work in this folder (default: a temporary one)")
    args = p.parse_args()
    sets = []
    for s in args.sets:
        try:
            n, side = (int(v) for v in s.split(":"))
        except ValueError:
            p.error(f"--sets: {s!r} is not N:SIDE, e.g. 10000:224")
        sets.append((n, side))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        baseline = measure([sys.executable, "-c", "import torch, lightlayers.cli, "
                                                  "lightlayers.data"], env)["peak"]
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; baseline "
              f"(import torch, lightlayers) {_mib(baseline)} MiB\n{HEADER}", flush=True)
        rows = [row for n, side in sets for row in run_set(n, side, args, work, baseline)]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(HEADER)
    for r in rows:
        print(_line(r))
    if args.json:
        args.json.write_text(json.dumps({"baseline_rss": baseline, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
