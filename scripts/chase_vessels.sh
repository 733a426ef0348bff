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
#   FOLDS="0 2" runs only those folds (the table then covers them only). JOBS=2 trains two folds at a time,
#   each with nproc/JOBS threads (THREADS overrides) and its log in OUT/fold<k>.log.
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
  local dir=$1 train_split=$2 val_split=$3 test_split=$4 t0 t1 threads=()
  [ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
  mkdir -p "$dir"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$dir/train_time.txt" \
    "$LIVERSEG" train --config configs/vessels_2d.yaml --run-dir "$dir/run" --set data.manifest="$OUT/chase.json" \
    --set data.train_split="$train_split" --set data.val_split="$val_split" "${threads[@]}" ${LIVERSEG_TRAIN_ARGS:-}
  t1=$(date +%s)
  echo $((t1 - t0)) > "$dir/train_seconds"
  # shellcheck disable=SC2086
  "$LIVERSEG" predict --manifest "$OUT/chase.json" --split "$test_split" -o "$dir/pred" --model "$dir/run" \
    "${threads[@]}" ${LIVERSEG_PREDICT_ARGS:-}
  "$LIVERSEG" evaluate "$dir/pred" --manifest "$OUT/chase.json" --split "$test_split" | tee "$dir/evaluation.txt"
  grep -E "Elapsed|User time|System time|Maximum resident" "$dir/train_time.txt" || true
  echo "training took $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s wall"
}

if [ $CV = 1 ]; then
  JOBS=${JOBS:-1}
  if [ "$JOBS" -gt 1 ]; then
    THREADS=${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
  fi
  pids=() failed=0
  for k in ${FOLDS:-0 1 2 3}; do
    echo "=== fold $k: train on cv_train$k, test on cv_fold$k"
    if [ "$JOBS" -gt 1 ]; then
      train_and_test "$OUT/fold$k" "cv_train$k" "cv_val$k" "cv_fold$k" > "$OUT/fold$k.log" 2>&1 &
      pids+=($!)
      if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
      fi
    else
      train_and_test "$OUT/fold$k" "cv_train$k" "cv_val$k" "cv_fold$k"
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if [ $failed = 1 ]; then
    echo "a fold failed; see $OUT/fold<k>.log" >&2
    exit 1
  fi
  "$PYTHON" "$HERE/vessel_cv_table.py" "$OUT"
else
  # The standard split: the run, predictions and evaluation sit directly in OUT as before.
  train_and_test "$OUT" train val test
fi
echo "total $(( ($(date +%s) - start) / 60 )) min"
