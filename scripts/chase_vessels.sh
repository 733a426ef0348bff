#!/usr/bin/env bash
# The retinal-vessel experiment on CHASE_DB1, end to end through the liverseg CLI.
#
# usage: scripts/chase_vessels.sh [--cv] [CHASE_ROOT] [OUT]
#   CHASE_ROOT  the CHASE_DB1 folder (default ../shared/data/chasedb1)
#   OUT         where manifest, runs, predictions and evaluations go (default chase_output, or
#               chase_cv_output with --cv; must not exist)
#
# Default: the standard split. Import the dataset -> train configs/vessels_2d.yaml on the first 20 images
#   -> predict the last 8 -> evaluate (Dice, sensitivity, specificity, accuracy, ROC AUC inside the field of
#   view, QC pictures).
# --cv: 4-fold cross-validation over all 28 images, folds by child (both eyes of a child in the same fold;
#   splits cv_train<k> / cv_fold<k> of `liverseg manifest import chase`). Each fold trains on the other
#   three, predicts and evaluates its own images into OUT/fold<k>/; then scripts/vessel_cv_table.py prints
#   the fold table (per-fold and mean AUC, Dice, accuracy) and writes OUT/cv_table.{md,csv}.
#   FOLDS="0 2" runs only those folds (the table then covers them only).
# Extra training settings go through LIVERSEG_TRAIN_ARGS, e.g. LIVERSEG_TRAIN_ARGS="--set train.epochs=5";
# extra prediction settings through LIVERSEG_PREDICT_ARGS.
set -euo pipefail
CV=0
if [ "${1:-}" = "--cv" ]; then
  CV=1
  shift
fi
ROOT=${1:-../shared/data/chasedb1}
if [ $CV = 1 ]; then OUT=${2:-chase_cv_output}; else OUT=${2:-chase_output}; fi
LIVERSEG=${LIVERSEG:-.venv/bin/liverseg}
[ -x "$LIVERSEG" ] || LIVERSEG=liverseg
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -e "$OUT" ]; then
  echo "$OUT already exists; give another output folder or remove it" >&2
  exit 2
fi
mkdir -p "$OUT"
start=$(date +%s)
"$LIVERSEG" manifest import chase "$ROOT" -o "$OUT/chase.json"

# train_and_test RUN_DIR TRAIN_SPLIT VAL_SPLIT TEST_SPLIT: train, predict TEST_SPLIT into RUN_DIR/../pred, evaluate.
train_and_test() {
  local dir=$1 train_split=$2 val_split=$3 test_split=$4 t0 t1
  mkdir -p "$dir"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$dir/train_time.txt" \
    "$LIVERSEG" train --config configs/vessels_2d.yaml --run-dir "$dir/run" --set data.manifest="$OUT/chase.json" \
    --set data.train_split="$train_split" --set data.val_split="$val_split" ${LIVERSEG_TRAIN_ARGS:-}
  t1=$(date +%s)
  echo $((t1 - t0)) > "$dir/train_seconds"
  # shellcheck disable=SC2086
  "$LIVERSEG" predict --manifest "$OUT/chase.json" --split "$test_split" -o "$dir/pred" --model "$dir/run" \
    ${LIVERSEG_PREDICT_ARGS:-}
  "$LIVERSEG" evaluate "$dir/pred" --manifest "$OUT/chase.json" --split "$test_split" | tee "$dir/evaluation.txt"
  grep -E "Elapsed|User time|System time|Maximum resident" "$dir/train_time.txt" || true
  echo "training took $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s wall"
}

if [ $CV = 1 ]; then
  for k in ${FOLDS:-0 1 2 3}; do
    echo "=== fold $k: train on cv_train$k, test on cv_fold$k"
    train_and_test "$OUT/fold$k" "cv_train$k" "cv_val$k" "cv_fold$k"
  done
  "$PYTHON" "$HERE/vessel_cv_table.py" "$OUT"
else
  # The standard split: the run, predictions and evaluation sit directly in OUT as before.
  train_and_test "$OUT" train val test
fi
echo "total $(( ($(date +%s) - start) / 60 )) min"
