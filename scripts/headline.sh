#!/usr/bin/env bash
# The tuned headline of README.md and docs/results.md, for one image source (pmnist: the
# PneumoniaMNIST images; jpeg: the study's JPEGs at 28 px):
#   1. every model tuned with the same budget (20 trials, 3 folds of the
#      training images, objective validation AUC), then EMA, TTA, twice the epochs and the
#      threshold decided on the same folds (lightlayers tune --decide);
#   2. each model trained over 10 seeds with what was tuned and kept, scored once on test;
#   3. the run, its predictions, the tuning's summary and the ledger count collected into
#      results/headline/NAME, and the generated tables rebuilt.
# Hours of CPU per source; every step resumes where it stopped, so rerun after an interruption.
# The two sources can run side by side: scripts/headline.sh pmnist & scripts/headline.sh jpeg
# Folders: STATE (default runs/headline), or TUNE_DIR and RUN_DIR for one source; ROOT, the
# folder holding results/ and the documents (default: this repository). MODELS, BUDGET, FOLDS,
# SEEDS and EXTRA (more flags for tune and run) change the study itself: for trying the
# pipeline on a few images, not for the headline.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/chest_xray_pneumonia}
STATE=${STATE:-runs/headline}
ROOT=${ROOT:-.}
LL=${LL:-.venv/bin/lightlayers}
PY=${PY:-.venv/bin/python}
all=study-light-k1,study-light-k2,study-light-k3,study-light-k4,study-light-k5
MODELS=${MODELS:-$all,study-conv,study-residual-conv}
BUDGET=${BUDGET:-20}
FOLDS=${FOLDS:-3}
SEEDS=${SEEDS:-0,1,2,3,4,5,6,7,8,9}
read -r -a extra <<< "${EXTRA:-}"
case "${1:-}" in
  pmnist) source=(--data "$DATA/pneumoniamnist_28_reconstructed.npz") ;;
  jpeg) source=(--data "$DATA/chest_xray_224.tar.gz" --size 28 --in-chans 3) ;;
  *) echo "usage: scripts/headline.sh pmnist|jpeg" >&2; exit 2 ;;
esac
tune=${TUNE_DIR:-$STATE/tune-$1}
run=${RUN_DIR:-$STATE/run-$1}
common=(--models "$MODELS" --protocol improved --threads 1 "${extra[@]}")
"$LL" tune "${source[@]}" "${common[@]}" --budget "$BUDGET" --folds "$FOLDS" --objective auc \
  --decide --out "$tune"
# A failed trial stops the script here (exit 1); rerunning retries it.
"$LL" run "${source[@]}" "${common[@]}" --tuned "$tune" --seeds "$SEEDS" --out "$run"
"$PY" scripts/results.py collect "$1" "$run" "$tune" --root "$ROOT"
"$PY" scripts/results.py build --root "$ROOT"
