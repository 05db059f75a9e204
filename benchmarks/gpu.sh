#!/usr/bin/env bash
# The GPU benchmark suite in one command, under 8 minutes on one H100/H200:
# whole study (7 models x 20 epochs at 224 px, InceptionV3 at 299), per-model epoch time of our
# trainer vs a plain PyTorch loop, LightConv2d vs two nn.Conv2d, data pipeline, other settings.
#
#   benchmarks/gpu.sh            # full suite; JSON in $OUT/gpu.json when OUT is set,
#                                # else benchmarks/results/gpu.json; tables on stdout
#   benchmarks/gpu.sh --smoke    # tiny sizes, 1 epoch: an end-to-end check (also on the CPU)
#
# Without a CUDA device the suite says so and runs on the CPU. Python: $PYTHON, else the
# project's .venv, else python3 (with torch, torchvision and the project's dependencies; the
# package is imported from src/, so it need not be installed). The chest X-ray archive is read
# from ../shared/data unless LIGHTLAYERS_CHEST_TAR names it. Extra flags go to bench_gpu.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
# 390 s of measurements leave room for the last variant and start-up within 8 minutes.
exec "$py" "$here/bench_gpu.py" --budget-s 390 "$@"
