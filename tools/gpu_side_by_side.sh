#!/bin/bash
# Side-by-side GPU timings of stau_jax and the authors' PyTorch model.
#
#   bash tools/gpu_side_by_side.sh PATH/TO/AUTHORS/STAU OUTPUT_DIR [BATCH]
#
# Runs `python -m stau_jax.benchmark` (float32, then half_precision; with a
# profiler trace of each) and tools/torch_reference_step.py (float32, then
# bf16 autocast) at configs/mmnist.py's architecture, one after the other on
# the same GPU, and writes each JSON line plus a summary to OUTPUT_DIR.
set -u -o pipefail
reference=${1:?usage: gpu_side_by_side.sh REFERENCE OUTPUT_DIR [BATCH]}
out=${2:?usage: gpu_side_by_side.sh REFERENCE OUTPUT_DIR [BATCH]}
batch=${3:-16}
steps=${STEPS:-20}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv | tee "$out/gpu.txt"

jax_bench() {  # name, extra flags...
  local name=$1; shift
  python3 -m stau_jax.benchmark --config=configs/mmnist.py \
    --config.batch_size="$batch" --steps="$steps" "$@" 2>"$out/$name.err" \
    | tee "$out/$name.txt" | tail -1 > "$out/$name.json" \
    || tail -20 "$out/$name.err"
}
torch_bench() {  # name, extra flags...
  local name=$1; shift
  python3 tools/torch_reference_step.py --reference="$reference" \
    --device=cuda --batch_size="$batch" --steps="$steps" "$@" \
    > "$out/$name.json" 2>"$out/$name.err" || tail -20 "$out/$name.err"
}

jax_bench jax_f32 --profile_dir="$out/trace_f32"
jax_bench jax_bf16 --config.half_precision=True \
  --profile_dir="$out/trace_bf16"
torch_bench torch_f32
torch_bench torch_bf16 --autocast=bf16
for name in jax_f32 jax_bf16 torch_f32 torch_bf16; do
  echo "$name $(cat "$out/$name.json")"
done | tee "$out/summary.txt"
