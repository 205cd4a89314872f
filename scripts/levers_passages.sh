#!/usr/bin/env bash
# Issue 10, lever 1 at an equal budget: the default recipe (facts only) vs. facts + 50% multi-genre passages,
# 150 steps each, evaluated on the held-out narrative file and held-out passage genres (100 examples each).
# Results: ROOT/eval-{a,b}-{narrative,passages-test}/results.json (docs/results/levers/ holds copies).
#   bash scripts/levers_passages.sh [ROOT]        (~1 h on 2 CPU cores; one heavy process at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs-levers}
PY=${PY:-.venv/bin/python}
for v in a b; do
  extra=()
  [ "$v" = b ] && extra=(--data.passages.share 0.5)
  $PY -m kvproj fit --config configs/default.yaml --run.name "r10-$v" --trainer.default_root_dir "$ROOT" \
    --trainer.max_steps 150 --trainer.callbacks '[]' --trainer.limit_val_batches 0 "${extra[@]}"
  for e in narrative passages:test; do
    $PY -m kvproj evaluate --projector "$ROOT/checkpoints/r10-$v/projector" --eval_file "$e" --limit 100 \
      --conditions target_alone target_text projected shuffled_source text_to_text \
      --output "$ROOT/eval-$v-${e//:/-}/results.json" --overwrite
  done
done
