#!/usr/bin/env bash
# Trains on all GPUs of this machine: one process, data-parallel over every
# visible device (config.batch_size must be divisible by their number).
#
#   launch/gpu_all.sh CONFIG WORKDIR [--config.field=value ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/gpu_all.sh configs/mmnist.py runs/mmnist
set -euo pipefail
if (( $# < 2 )); then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
# Let each GPU's memory grow as needed instead of preallocating 75% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec "${PYTHON:-python3}" -m stau_jax.main --config="$config" \
  --workdir="$workdir" "$@"
