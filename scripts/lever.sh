#!/usr/bin/env bash
# One issue-10 lever at an equal budget: fit the default recipe with the given overrides for STEPS steps, then
# evaluate the projected cache and the shuffled control on the held-out narrative file and the held-out passage
# genres (first 100 examples each). The reference conditions (floor, oracle, text_to_text) do not depend on the
# projector: they come from scripts/levers_passages.sh.
#   bash scripts/lever.sh NAME STEPS [fit overrides...]       (ROOT=runs-levers by default)
# CONFIG=configs/OTHER.yaml trains another recipe or pair (the three-pair table: CONFIG=configs/smollm2-qwen-coder.yaml
# with CONDITIONS="target_alone target_text source_text projected shuffled_source text_to_text").
# Results: ROOT/eval-NAME-{narrative,passages-test}/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1 STEPS=$2
shift 2
ROOT=${ROOT:-runs-levers}
PY=${PY:-.venv/bin/python}
CONDITIONS=${CONDITIONS:-projected shuffled_source}
CONFIG=${CONFIG:-configs/default.yaml}
# a run with a checkpoint and no exported projector was interrupted: resume it (exact), else start afresh
start=(--run.overwrite true)
if [ -e "$ROOT/checkpoints/$NAME/last.ckpt" ] && [ ! -e "$ROOT/checkpoints/$NAME/projector" ]; then start=(--ckpt_path last); fi
$PY -m kvproj fit --config "$CONFIG" --run.name "$NAME" --trainer.default_root_dir "$ROOT" \
  --trainer.max_steps "$STEPS" --trainer.callbacks '[]' --trainer.limit_val_batches 0 "${start[@]}" "$@"
for e in narrative passages:test; do
  # shellcheck disable=SC2086
  $PY -m kvproj evaluate --projector "$ROOT/checkpoints/$NAME/projector" --eval_file "$e" --limit 100 \
    --conditions $CONDITIONS --output "$ROOT/eval-$NAME-${e//:/-}/results.json" --overwrite
done
