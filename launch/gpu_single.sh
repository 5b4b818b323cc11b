#!/usr/bin/env bash
# Trains on one GPU of this machine.
#
#   launch/gpu_single.sh CONFIG WORKDIR [--config.field=value ...]
#   GPU=2 launch/gpu_single.sh configs/mmnist.py runs/mmnist
#
# GPU picks the device (default 0); PYTHON the interpreter. Running the same
# command again resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
if (( $# < 2 )); then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
export CUDA_VISIBLE_DEVICES=${GPU:-0}
exec "${PYTHON:-python3}" -m stau_jax.main --config="$config" \
  --workdir="$workdir" "$@"
