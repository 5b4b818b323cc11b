#!/usr/bin/env bash
# Trains on one GPU of this machine: gpu_all.sh with only that GPU visible.
#
#   launch/gpu_single.sh CONFIG WORKDIR [--config.field=value ...]
#   GPU=2 launch/gpu_single.sh configs/mmnist.py runs/mmnist
#
# GPU picks the device (default 0); PYTHON the interpreter. Running the same
# command again resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${GPU:-0}
exec "$(dirname "$0")/gpu_all.sh" "$@"
