"""Time and peak memory of `lightlayers report` at 10, 100 and 400 trials.

Each run folder holds real trials (linear classifiers trained on scikit-learn's digits, the
report tests' stores: ``tests/report_fixtures.py``), binary, 20 epochs of history each. Per
size, in a child process each so that its peak memory is its own: the whole report (every
format, figures included), ``--json``'s files (csv and md: no figures), and a finished
folder's rerun, which keeps a report drawn from the same results (``reuse``).

    .venv/bin/python benchmarks/bench_report.py [--sizes 10,100,400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (models, seeds) per number of trials.
SHAPES = {10: (2, 5), 100: (5, 20), 400: (10, 40)}

CHILD = """
import json, resource, sys, time
from lightlayers.report import write_report
run, formats, reuse = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
t = time.perf_counter()
r = write_report(run, formats=formats, console=False, reuse=reuse)
print(json.dumps({"s": time.perf_counter() - t, "reused": r.reused, "files": len(r.files),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(run: Path, formats: str, reuse: bool) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(run), formats, "1" if reuse else "0"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10,100,400")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from report_fixtures import build_store

    print(f"{'trials':>6} {'step':<26} {'seconds':>8} {'peak MB':>8} {'files':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            n_models, n_seeds = SHAPES[n]
            models = [f"linear-{i}" for i in range(n_models)]
            t = time.perf_counter()
            run = build_store(Path(tmp) / f"run{n}", models=models, seeds=range(n_seeds),
                              epochs=20)
            print(f"{n:>6} {'(filling the store)':<26} {time.perf_counter() - t:>8.1f}")
            for step, formats, reuse in (("report (every format)", "html,md,csv,png", False),
                                         ("finished rerun (reuse)", "html,md,csv,png", True),
                                         ("report --json (csv,md)", "csv,md", False)):
                r = _child(run, formats, reuse)
                if reuse and not r["reused"]:
                    step += " [redrawn!]"
                print(f"{n:>6} {step:<26} {r['s']:>8.2f} {r['rss_mb']:>8.0f} {r['files']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
