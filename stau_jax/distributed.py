"""Several devices and hosts: `jax.distributed.initialize` from environment
variables, and replicating host pytrees for the pmapped steps.

Each host runs the same command (`python -m stau_jax.main ...`) with the same
--workdir on a shared file system. Hosts are joined when

* JAX_COORDINATOR_ADDRESS=host:port is set (the address of process 0), with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) unless the
  cluster provides them (SLURM, Open MPI); or
* the job runs under SLURM or Open MPI with more than one task, or
  STAU_DISTRIBUTED=1 is set (e.g. on a Cloud TPU pod slice): then
  `jax.distributed.initialize()` detects everything itself.

Otherwise the run uses the local devices only. CPU hosts talk through gloo.
"""
import os

from absl import logging
import jax
import numpy as np


def _int_from_environment(name):
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'Environment variable {name}={value!r} must be an '
                     f'integer.') from None


def initialize_from_environment():
  """Calls jax.distributed.initialize if the environment asks for several hosts.

  Returns:
    True if it initialized a multi-host run.
  """
  coordinator = os.environ.get('JAX_COORDINATOR_ADDRESS')
  cluster_tasks = max(_int_from_environment('SLURM_NTASKS') or 1,
                      _int_from_environment('OMPI_COMM_WORLD_SIZE') or 1)
  if not (coordinator or cluster_tasks > 1 or
          os.environ.get('STAU_DISTRIBUTED') == '1'):
    return False
  jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=_int_from_environment('JAX_NUM_PROCESSES'),
      process_id=_int_from_environment('JAX_PROCESS_ID'))
  logging.info('Process %d of %d; %d local and %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def replicate(tree):
  """Copies a host pytree to every local device for the pmapped steps.

  Unlike flax.jax_utils.replicate, the copies carry the sharding of pmap
  outputs (axis 'batch'), so the train step compiles once, not twice.
  """
  num_devices = jax.local_device_count()
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(x, (num_devices,) + np.shape(x)), tree)
  return jax.pmap(lambda x: x, axis_name='batch')(stacked)
