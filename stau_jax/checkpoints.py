"""Training checkpoints in a workdir: orbax, plus the run's config.json.

Layout: WORKDIR/config.json (the config the run started with) and
WORKDIR/checkpoints/<step>/ (orbax; written to a temporary directory and
renamed when complete, so a killed run never leaves a half-written step that
looks finished). A checkpoint is the train state as a state dict
(flax.serialization): {'step', 'params', 'opt_state', 'rng'}.

Anything that would make a restart silently train something else (a config
whose model or data shapes differ, an unreadable checkpoint, a checkpoint
directory without its config.json) raises CheckpointError instead.
"""
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'

# Fields that must match between a run and the config it resumes with: the
# model architecture and the shape of the frames it was trained on.
ARCHITECTURE_FIELDS = ('model',) + tuple(
    f'data.{name}' for name in ('dataset', 'image_size', 'channels',
                                'input_length', 'total_length'))
# config.model fields that choose how, not what, the model computes.
IMPLEMENTATION_FIELDS = ('conv_impl', 'layer_loop', 'remat')


class CheckpointError(RuntimeError):
  """A checkpoint or workdir that cannot be resumed from safely."""


def _field(config, path):
  for name in path.split('.'):
    config = config[name]
  if path == 'model':
    return {k: v for k, v in config.items() if k not in IMPLEMENTATION_FIELDS}
  return config


def _normalize(value):
  """JSON round trip, so tuples and lists compare equal."""
  return json.loads(json.dumps(value, default=lambda x: x.to_dict()))


def read_config(workdir):
  """The ConfigDict in WORKDIR/config.json; CheckpointError if unreadable."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise CheckpointError(f'Cannot read the run config {path}: {e}') from e


def write_config(workdir, config):
  """Writes `config` to WORKDIR/config.json atomically."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def check_compatible(saved_config, config, workdir):
  """Raises CheckpointError if an architecture field of the configs differs."""
  for path in ARCHITECTURE_FIELDS:
    saved, current = (_normalize(_field(c, path)) for c in (saved_config,
                                                            config))
    if isinstance(saved, dict) and isinstance(current, dict):
      differing = sorted(k for k in saved.keys() | current.keys()
                         if saved.get(k) != current.get(k))
      if differing:
        path = f'{path}.{differing[0]}'
        saved, current = (saved.get(differing[0]),
                          current.get(differing[0]))
    if saved != current:
      raise CheckpointError(
          f'{workdir} holds a run with config.{path} = {saved}, but the '
          f'current config has {current}. Resuming would mix two models; use '
          f'another --workdir, or the config of that run.')


def create_manager(workdir, config, read_only=False):
  """An orbax CheckpointManager for WORKDIR/checkpoints keeping the last few."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.get('keep_checkpoints', 3), create=not read_only,
      read_only=read_only)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager, state):
  """Saves a host (unreplicated) train state at its step, asynchronously."""
  state_dict = serialization.to_state_dict(jax.device_get(state))
  manager.save(int(state.step), args=ocp.args.StandardSave(state_dict))


def restore_state_dict(manager, step, workdir):
  """The saved state dict of `step`; CheckpointError if it cannot be read."""
  path = os.path.join(workdir, CHECKPOINT_DIR, str(step))
  try:
    return manager.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:  # orbax and tensorstore raise many types.
    raise CheckpointError(
        f'Checkpoint {path} cannot be restored (corrupt, incomplete or '
        f'written by an incompatible version): {type(e).__name__}: {e}. '
        f'Nothing was overwritten. Delete that step directory to resume '
        f'from an earlier checkpoint, or use another --workdir.') from e


def restore_or_keep(manager, state, config, workdir):
  """Restores the latest checkpoint into `state`'s structure, if there is one.

  Args:
    manager: from `create_manager`.
    state: freshly initialized host train state (the restore target).
    config: the current config, checked against WORKDIR/config.json.
    workdir: the run directory.

  Returns:
    The restored state, or `state` unchanged when there is no checkpoint.

  Raises:
    CheckpointError: config.json is missing or differs in an architecture
      field, or the checkpoint is unreadable or its arrays do not fit.
  """
  step = manager.latest_step()
  if step is None:
    return state
  check_compatible(read_config(workdir), config, workdir)
  restored = restore_state_dict(manager, step, workdir)
  target = serialization.to_state_dict(state)
  target_shapes = _shapes(target)
  restored_shapes = _shapes(restored)
  for name in sorted(target_shapes.keys() | restored_shapes.keys()):
    if target_shapes.get(name) != restored_shapes.get(name):
      raise CheckpointError(
          f'Checkpoint step {step} in {workdir}: {name!r} has shape '
          f'{restored_shapes.get(name)} but the current config needs '
          f'{target_shapes.get(name)} (None: absent).')
  return serialization.from_state_dict(state, restored)


def _shapes(state_dict):
  leaves = jax.tree_util.tree_flatten_with_path(state_dict)[0]
  return {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in leaves}


def load_params(workdir, step=None):
  """Parameters and config of a training run, for export.

  Args:
    workdir: the run directory (holding config.json and checkpoints/).
    step: checkpoint step; None means the latest.

  Returns:
    (params, config): float32 numpy parameter tree and the run's ConfigDict.
  """
  config = read_config(workdir)
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    raise CheckpointError(f'{workdir} has no {CHECKPOINT_DIR}/ directory.')
  manager = create_manager(workdir, config, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f'{workdir} has no finished checkpoint.')
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise CheckpointError(f'{workdir} has no checkpoint for step {step}; it '
                          f'has steps {sorted(steps)}.')
  params = restore_state_dict(manager, step, workdir)['params']
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32),
                                params), config
