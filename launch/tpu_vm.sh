#!/usr/bin/env bash
# Trains on a Cloud TPU VM (a single host or a pod slice): runs the same
# command on every worker over gcloud ssh; STAU_DISTRIBUTED=1 makes
# jax.distributed find the other workers itself.
#
#   TPU_NAME=my-tpu ZONE=us-central2-b launch/tpu_vm.sh CONFIG WORKDIR \
#       [--config.field=value ...]
#
# Every worker needs a checkout with the package installed in REPO_DIR
# (default ~/stau_jax: git clone ... && pip install -e .). On a pod slice
# WORKDIR must be shared by all workers (e.g. an NFS/Filestore mount).
set -euo pipefail
if (( $# < 2 )); then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR" \
    "[--config.field=value ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
# Quote every argument for the remote shell.
arguments=$(printf ' %q' "--config=$1" "--workdir=$2" "${@:3}")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ${REPO_DIR:-~/stau_jax} && STAU_DISTRIBUTED=1 python3 -m stau_jax.main$arguments"
