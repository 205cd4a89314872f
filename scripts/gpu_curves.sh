#!/usr/bin/env bash
# Learning curves of several recipes at once on one GPU (issue 10, lever 7): each recipe is the default config plus
# its overrides, trained in its own process (the zoo models are small, so one process leaves the GPU mostly idle),
# evaluated every EVERY steps and at the end on the first 100 examples of the narrative file and the held-out passage
# genres (projected and shuffled_source, 16 greedy tokens: the same settings as scripts/lever.sh's `evaluate`).
#   ROOT=DIR STEPS=3000 EVERY=500 MAX_SECONDS=360 bash scripts/gpu_curves.sh NAME "OVERRIDES" [NAME "OVERRIDES"]...
# Every run stops at STEPS or after MAX_SECONDS of training, whichever comes first (Lightning's max_time; the
# end-of-fit evaluation still runs). Curve points: ROOT/NAME/eval/<set>-step<N>.json; logs: ROOT/NAME.log.
# Summarize with `python scripts/gpu_curves_table.py ROOT`.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs-curves} STEPS=${STEPS:-3000} EVERY=${EVERY:-500} MAX_SECONDS=${MAX_SECONDS:-360}
PY=${PY:-python3}
CONFIG=${CONFIG:-configs/default.yaml}
THREADS=${THREADS:-4}
COMMON=${COMMON:-}  # overrides for every recipe, e.g. COMMON="--run.matmul_precision high"
if [ $(($# % 2)) -ne 0 ] || [ $# -eq 0 ]; then
  echo "usage: bash scripts/gpu_curves.sh NAME \"OVERRIDES\" [NAME \"OVERRIDES\"]... (got $# arguments)" >&2
  exit 2
fi
mkdir -p "$ROOT"
: >"$ROOT/runs.tsv"
max_time=$(printf '00:%02d:%02d:%02d' $((MAX_SECONDS / 3600)) $((MAX_SECONDS % 3600 / 60)) $((MAX_SECONDS % 60)))
callbacks="[{class_path: kvproj.callbacks.evaluation.FactsEvalCallback, init_args: {every_n_steps: $EVERY, limit: 100, \
max_new_tokens: 16, conditions: [projected, shuffled_source], eval_files: [narrative, 'passages:test']}}]"
pids=()
while [ $# -gt 0 ]; do
  name=$1 overrides=$2
  shift 2
  printf '%s\t%s\n' "$name" "$overrides" >>"$ROOT/runs.tsv"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=$THREADS $PY -m kvproj fit --config "$CONFIG" --run.name "$name" --run.overwrite true \
    --trainer.default_root_dir "$ROOT/$name" --trainer.max_steps "$STEPS" --trainer.max_time "$max_time" \
    --trainer.limit_val_batches 0 --run.checkpoint_every_n_steps 1000 --trainer.callbacks "$callbacks" \
    $COMMON $overrides >"$ROOT/$name.log" 2>&1 &
  pids+=("$!")
  echo "started $name (pid $!): $overrides"
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for log in "$ROOT"/*.log; do
  echo "== $log"
  grep -E "eval on|Error|error:" "$log" | tail -n 12
done
exit $status
