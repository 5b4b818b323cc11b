#!/usr/bin/env bash
# Trains on several hosts with jax.distributed: run this once on every host,
# with the same CONFIG, WORKDIR (on a shared file system) and coordinator.
#
#   launch/multihost.sh CONFIG WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID \
#       [--config.field=value ...]
#   # host 0:  launch/multihost.sh configs/mmnist.py /shared/runs/mmnist host0:1234 2 0
#   # host 1:  launch/multihost.sh configs/mmnist.py /shared/runs/mmnist host0:1234 2 1
#
# COORDINATOR is host:port of process 0, reachable from every host. Each
# process uses all devices of its host; the global batch is split over all.
set -euo pipefail
if (( $# < 5 )); then
  echo "usage: $0 CONFIG WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID" \
    "[--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
# Read by stau_jax.distributed.initialize_from_environment.
export JAX_COORDINATOR_ADDRESS=$3 JAX_NUM_PROCESSES=$4 JAX_PROCESS_ID=$5
shift 5
exec "${PYTHON:-python3}" -m stau_jax.main --config="$config" \
  --workdir="$workdir" "$@"
