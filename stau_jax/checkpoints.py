"""Training checkpoints in a workdir: orbax, plus the run's config.json.

Layout: WORKDIR/config.json (the config the run started with) and
WORKDIR/checkpoints/<step>/ (orbax; written to a temporary directory and
renamed when complete, so a killed run never leaves a half-written step that
looks finished). A checkpoint is the train state as a state dict
(flax.serialization): {'step', 'params', 'opt_state', 'rng'}, plus 'digest',
the SHA-256 of all of them, checked on restore. Only finite states are saved.

Anything that would make a restart silently train something else (a config
whose model or data shapes differ, an unreadable or corrupted checkpoint, a
checkpoint directory without its config.json) raises CheckpointError
instead. While a run trains, WORKDIR/lock names its host and process
(`workdir_lock`), so a second run on the same workdir is refused.
"""
import contextlib
import hashlib
import json
import os
import socket

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from stau_jax import data
from stau_jax import errors
from stau_jax import outputs
from stau_jax import upgrade

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = 'lock'
DIGEST = 'digest'
_held_locks = set()  # absolute lock paths this process holds

# Fields that must match between a run and the config it resumes with: the
# model architecture and the shape of the frames it was trained on. A task
# whose checkpoints depend on more adds its own (train.Task.
# architecture_fields).
ARCHITECTURE_FIELDS = ('model',) + tuple(
    f'data.{name}' for name in ('dataset', 'image_size', 'channels',
                                'input_length', 'total_length'))
# config.model fields that choose how, not what, the model computes.
IMPLEMENTATION_FIELDS = ('conv_impl', 'layer_loop', 'remat')


CheckpointError = errors.CheckpointError
WorkdirBusyError = errors.WorkdirBusyError


def _field(config, path):
  """config.<path> (None if absent), without the implementation fields."""
  for name in path.split('.'):
    config = config.get(name)
  if path == 'model':
    return {k: v for k, v in config.to_dict().items()
            if k not in IMPLEMENTATION_FIELDS}
  return config


def _normalize(value):
  """JSON round trip, so tuples and lists compare equal."""
  return json.loads(json.dumps(value, default=lambda x: x.to_dict()))


def read_config(workdir):
  """The ConfigDict in WORKDIR/config.json, upgraded (`upgrade.upgrade_config`:
  runs of older versions get the fields added since); CheckpointError if
  unreadable."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      fields = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'Cannot read the run config {path}: {e}') from e
  missing = [name for name in ('model', 'data') if not isinstance(
      fields, dict) or not isinstance(fields.get(name), dict)]
  if missing:
    raise CheckpointError(
        f'The run config has no {" or ".join(missing)} section', path,
        'it was not written by stau_jax training; restore the file or use '
        'another --workdir')
  return upgrade.upgrade_config(ml_collections.ConfigDict(fields))


def write_config(workdir, config):
  """Writes `config` to WORKDIR/config.json atomically."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  outputs.write_text(path, config.to_json(indent=2, sort_keys=True))


def check_compatible(saved_config, config, workdir,
                     fields=ARCHITECTURE_FIELDS):
  """Raises CheckpointError if one of `fields` (dotted) differs in the
  configs, or a field the dataset keeps on resume (`data.resume_conflict`)."""
  for path in fields:
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
  conflict = data.resume_conflict(saved_config, config)
  if conflict:
    raise CheckpointError(f'{workdir} cannot resume: {conflict}.')


def flatten(tree, prefix=''):
  """{'a.b': value} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def changed_fields(saved_config, config):
  """[(field, saved value, current value)] of the fields that differ."""
  saved, current = (flatten(_normalize(c.to_dict()))
                    for c in (saved_config, config))
  return [(name, saved.get(name), current.get(name))
          for name in sorted(saved.keys() | current.keys())
          if saved.get(name) != current.get(name)]


def create_manager(workdir, config, read_only=False):
  """An orbax CheckpointManager for WORKDIR/checkpoints keeping the last few."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=not read_only,
      read_only=read_only)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def _alive(pid):
  """Whether process `pid` of this host exists."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _read_lock(path):
  """The {'host', 'pid'} in a lock file; None if it vanished, {} if garbled."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  valid = (isinstance(holder, dict) and isinstance(holder.get('pid'), int)
           and isinstance(holder.get('host'), str))
  return holder if valid else {}


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds WORKDIR/lock while a run trains there: one workdir, one run.

  The lock file holds {"host", "pid"}. It is created atomically (a complete
  temporary file hard-linked to its name, which fails if the name exists) and
  removed on exit. A lock left by a process of this host that no longer runs
  (killed) is taken over with a warning.

  Raises:
    WorkdirBusyError: another process holds the lock (its host and pid are
      in the message), or the lock file is unreadable.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.abspath(os.path.join(workdir, LOCK_FILE))
  owner = {'host': socket.gethostname(), 'pid': os.getpid()}
  if path in _held_locks:
    raise WorkdirBusyError(
        'This process is already training in this workdir', path,
        'wait for that run to finish, or use another --workdir')
  temporary = f'{path}.{owner["host"]}.{owner["pid"]}'
  with open(temporary, 'w') as f:
    json.dump(owner, f)
  try:
    while True:
      try:
        os.link(temporary, path)
        break
      except FileExistsError:
        pass
      holder = _read_lock(path)
      if holder is None:  # released meanwhile
        continue
      if not holder:
        raise WorkdirBusyError(
            'The workdir lock file is unreadable', path,
            'if no other training runs in this workdir, delete the file')
      # Our own pid in a lock we do not hold: left by an earlier container
      # or boot that reused it.
      stale = (holder.get('host') == owner['host'] and
               (holder.get('pid') == owner['pid'] or
                not _alive(holder.get('pid'))))
      if not stale:
        raise WorkdirBusyError(
            f'Another training (process {holder.get("pid")} on host '
            f'{holder.get("host")}) is running in this workdir', path,
            'wait for it to finish, stop it, or use another --workdir; if '
            'that process no longer runs, delete the lock file')
      # Move the stale lock aside, then check it was still the stale one (a
      # concurrent starter may have taken it over first): if not, put it back.
      aside = f'{temporary}.stale'
      try:
        os.rename(path, aside)
      except FileNotFoundError:
        continue
      if _read_lock(aside) == holder:
        logging.warning('Taking over the workdir lock %s of process %s, '
                        'which no longer runs.', path, holder.get('pid'))
        os.remove(aside)
      else:
        try:
          os.link(aside, path)
        finally:
          os.remove(aside)
  finally:
    os.remove(temporary)
  _held_locks.add(path)
  try:
    yield
  finally:
    _held_locks.discard(path)
    if _read_lock(path) == owner:
      os.remove(path)


def _digest(state_dict):
  """SHA-256 of every leaf's path, dtype, shape and bytes, as uint8 (32,)."""
  sha = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(state_dict)[0]
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    leaf = np.ascontiguousarray(leaf)
    sha.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'
               .encode())
    sha.update(leaf.tobytes())
  return np.frombuffer(sha.digest(), np.uint8)


def _non_finite_leaves(state_dict):
  leaves = jax.tree_util.tree_flatten_with_path(state_dict)[0]
  return [jax.tree_util.keystr(path) for path, leaf in leaves
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact) and
          not np.all(np.isfinite(leaf))]


def save(manager, state):
  """Saves a host (unreplicated) train state at its step, asynchronously.

  Raises FloatingPointError (nothing is written) if a parameter or optimizer
  array holds NaN or inf: a checkpoint is always one a run can resume from.
  """
  state_dict = serialization.to_state_dict(jax.device_get(state))
  non_finite = _non_finite_leaves(state_dict)
  if non_finite:
    raise FloatingPointError(
        f'Not saving the checkpoint of step {int(state.step)}: '
        f'{len(non_finite)} arrays hold NaN or inf, e.g. {non_finite[0]}.')
  state_dict[DIGEST] = _digest(state_dict)
  manager.save(int(state.step), args=ocp.args.StandardSave(state_dict))


def restore_state_dict(manager, step, workdir):
  """The saved state dict of `step` (digest checked and removed).

  Raises CheckpointError if it cannot be read or its digest does not match.
  """
  path = os.path.join(workdir, CHECKPOINT_DIR, str(step))
  remedy = ('Nothing was overwritten. Delete that step directory to resume '
            'from an earlier checkpoint, or use another --workdir.')
  try:
    state_dict = manager.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:  # orbax and tensorstore raise many types.
    raise CheckpointError(
        f'Checkpoint {path} cannot be restored (corrupt, incomplete or '
        f'written by an incompatible version): {type(e).__name__}: {e}. '
        f'{remedy}') from e
  saved_digest = state_dict.pop(DIGEST, None)
  if saved_digest is None:
    logging.warning('Checkpoint %s has no digest (written by an older '
                    'stau_jax); its integrity cannot be checked.', path)
  elif not np.array_equal(np.asarray(saved_digest), _digest(state_dict)):
    raise CheckpointError(
        f'Checkpoint {path} is corrupt: its data do not match the digest '
        f'saved with it. {remedy}')
  return state_dict


def restore_or_keep(manager, state, config, workdir,
                    fields=ARCHITECTURE_FIELDS):
  """Restores the latest checkpoint into `state`'s structure, if there is one.

  Args:
    manager: from `create_manager`.
    state: freshly initialized host train state (the restore target).
    config: the current config, checked against WORKDIR/config.json.
    workdir: the run directory.
    fields: the config fields that must match the run's (`check_compatible`).

  Returns:
    The restored state, or `state` unchanged when there is no checkpoint.

  Raises:
    CheckpointError: config.json is missing or differs in an architecture
      field, or the checkpoint is unreadable or its arrays do not fit.
  """
  step = manager.latest_step()
  if step is None:
    return state
  check_compatible(read_config(workdir), config, workdir, fields)
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
