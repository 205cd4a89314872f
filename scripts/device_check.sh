#!/usr/bin/env bash
# GPU checks that CI (CPU only) cannot make: exactness on CUDA, mixed-precision training (bf16-mixed, 16-mixed),
# bitsandbytes 4-bit/8-bit frozen models, evaluation on the GPU. Tiny models only (no downloads).
#   bash scripts/device_check.sh [OUTDIR]
set -uo pipefail
out=${1:-/tmp/kvproj-device-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 KVPROJ_LOG=INFO PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { echo; echo "=== $*"; "$@" || { echo "FAILED: $*"; status=1; }; }
step $py -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__, torch.cuda.get_device_name(0))"
step $py -m kvproj doctor --no-zoo --device cuda --json
step $py -m kvproj doctor --no-zoo --device cuda --dtype bfloat16
step $py -m kvproj doctor --no-zoo --device cuda --quantization 4bit
step $py -m kvproj doctor --no-zoo --device cuda --quantization 8bit
for precision in bf16-mixed 16-mixed; do
  step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.precision $precision \
    --trainer.default_root_dir "$out/$precision" --trainer.max_steps 40
done
step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.precision bf16-mixed \
  --trainer.default_root_dir "$out/bf16-mixed" --trainer.max_steps 50 --ckpt_path last
step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.default_root_dir "$out/4bit" \
  --data.target.quantization 4bit --data.target.device cuda --data.source.device cuda --trainer.max_steps 20
step $py -m kvproj evaluate --projector "$out/bf16-mixed/checkpoints/smoke/projector" --device cuda --limit 32 \
  --output "$out/eval/results.json"
exit $status
