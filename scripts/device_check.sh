#!/usr/bin/env bash
# GPU checks that CI (CPU only) cannot make: exactness on CUDA, mixed-precision training (bf16-mixed, 16-mixed),
# bitsandbytes 4-bit/8-bit frozen models, evaluation on the GPU, `plan --measure` (predicted vs measured peak GPU
# memory). Tiny models only (no downloads), plus the default config when its zoo models are installed.
#   bash scripts/device_check.sh [OUTDIR]
set -uo pipefail
out=${1:-/tmp/kvproj-device-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 KVPROJ_LOG=INFO PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { echo; echo "=== $*"; "$@" || { echo "FAILED: $*"; status=1; }; }
step $py -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__, torch.cuda.get_device_name(0))"
step $py -m kvproj doctor --zoo false --device cuda --json
step $py -m kvproj doctor --zoo false --device cuda --dtype bfloat16
has_bnb=$($py -c "import bitsandbytes" >/dev/null 2>&1 && echo 1)
skip_bnb() { echo; echo "=== SKIPPED (bitsandbytes is not installed on this machine): $*"; }
for q in 4bit 8bit; do
  if [ -n "$has_bnb" ]; then step $py -m kvproj doctor --zoo false --device cuda --quantization $q
  else skip_bnb "doctor --quantization $q"; fi
done
for precision in bf16-mixed 16-mixed; do
  step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.precision $precision \
    --trainer.default_root_dir "$out/$precision" --trainer.max_steps 40
done
step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.precision bf16-mixed \
  --trainer.default_root_dir "$out/bf16-mixed" --trainer.max_steps 50 --ckpt_path last
if [ -n "$has_bnb" ]; then
  step $py -m kvproj fit --config configs/smoke.yaml --trainer.accelerator gpu --trainer.default_root_dir "$out/4bit" \
    --pair.target.quantization 4bit --pair.target.device cuda --pair.source.device cuda --trainer.max_steps 20
else skip_bnb "fit with a 4-bit target"; fi
step $py -m kvproj evaluate --projector "$out/bf16-mixed/checkpoints/smoke/projector" --device cuda --limit 32 \
  --output "$out/eval/results.json"
# plan: predicted vs measured peak GPU memory (torch.cuda.max_memory_allocated) and step time; the default config
# needs the two zoo models installed (`python -m kvproj zoo install smollm2-135m-instruct gemma3-270m`)
step $py -m kvproj plan --config smoke --measure 20 --device cuda --gpu h100-sxm --output "$out/plan_measure_smoke_cuda.json"
# wider random tiny models (~70M parameters together): the estimated terms dominate the allocator's fixed overheads
step $py -m kvproj plan --config docs/results/plan_inputs/tiny-wide.yaml --measure 20 --device cuda --gpu h100-sxm \
  --output "$out/plan_measure_tiny_wide_cuda.json"
if [ -f "$($py -m kvproj zoo path gemma3-270m)/config.json" ] && [ -f "$($py -m kvproj zoo path smollm2-135m-instruct)/config.json" ]; then
  step $py -m kvproj plan --config default --measure 10 --device cuda --gpu h100-sxm --output "$out/plan_measure_default_cuda.json"
fi
exit $status
