#!/usr/bin/env bash
# Issue 10, lever 1 at an equal budget: facts only vs. facts + 50% multi-genre passages, 150 steps each (the
# recipe of configs/default.yaml otherwise), evaluated on the held-out narrative file and held-out passage genres
# (100 examples each) with every reference condition. (The 80% row: `bash scripts/lever.sh p80 150
# --data.passages.share 0.8`.)
# Results: ROOT/eval-r10-{a,b}-{narrative,passages-test}/results.json (docs/results/levers/ holds copies).
#   bash scripts/levers_passages.sh [ROOT]        (~1 h on 2 CPU cores; one heavy process at a time)
set -euo pipefail
cd "$(dirname "$0")"
export ROOT=${1:-runs-levers}
export CONDITIONS="target_alone target_text projected shuffled_source text_to_text"
bash lever.sh r10-a 150 --data.passages.share 0.0
bash lever.sh r10-b 150 --data.passages.share 0.5
