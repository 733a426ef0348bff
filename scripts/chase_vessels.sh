#!/usr/bin/env bash
# The retinal-vessel experiment on CHASE_DB1, end to end through the liverseg CLI:
#   import the dataset -> train configs/vessels_2d.yaml -> predict the 8 test images -> evaluate
#   (Dice, sensitivity, specificity, accuracy, ROC AUC inside the field of view, QC pictures).
#
# usage: scripts/chase_vessels.sh [CHASE_ROOT] [OUT]
#   CHASE_ROOT  the CHASE_DB1 folder (default ../shared/data/chasedb1)
#   OUT         where manifest, run, predictions and evaluation go (default chase_output; must not exist)
# Extra training settings go through LIVERSEG_TRAIN_ARGS, e.g. LIVERSEG_TRAIN_ARGS="--set train.epochs=5".
set -euo pipefail
ROOT=${1:-../shared/data/chasedb1}
OUT=${2:-chase_output}
LIVERSEG=${LIVERSEG:-.venv/bin/liverseg}
[ -x "$LIVERSEG" ] || LIVERSEG=liverseg
if [ -e "$OUT" ]; then
  echo "$OUT already exists; give another output folder or remove it" >&2
  exit 2
fi
mkdir -p "$OUT"
start=$(date +%s)
"$LIVERSEG" manifest import chase "$ROOT" -o "$OUT/chase.json"
# shellcheck disable=SC2086
/usr/bin/time -v -o "$OUT/train_time.txt" \
  "$LIVERSEG" train --config configs/vessels_2d.yaml --run-dir "$OUT/run" --set data.manifest="$OUT/chase.json" \
  ${LIVERSEG_TRAIN_ARGS:-}
trained=$(date +%s)
"$LIVERSEG" predict --manifest "$OUT/chase.json" --split test -o "$OUT/pred" --model "$OUT/run"
"$LIVERSEG" evaluate "$OUT/pred" --manifest "$OUT/chase.json" --split test | tee "$OUT/evaluation.txt"
grep -E "Elapsed|User time|System time|Maximum resident" "$OUT/train_time.txt" || true
echo "training took $(( (trained - start) / 60 )) min $(( (trained - start) % 60 )) s wall; total $(( ($(date +%s) - start) / 60 )) min"
