"""The stau_jax export file: model parameters plus the full config, nothing else.

Format (version 1): one msgpack map (flax.serialization) with keys
  format         'stau_jax.export'
  version        1
  config         the experiment ConfigDict as JSON
  params_sha256  hex SHA-256 of `params`
  params         msgpack bytes of the parameter pytree (float32 arrays)
Written by `convert_torch` and by training (`python -m stau_jax.export`);
read by `predict`, `evaluate` and the notebook. Needs neither torch nor the
training checkpoint. Files are written atomically (outputs.write_bytes).

  python -m stau_jax.export --workdir=runs/mmnist [--step=N] --output=FILE

exports a training run's checkpoint (the latest unless --step).
"""
import hashlib
import json
import os

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from flax import serialization

from stau_jax import checkpoints
from stau_jax import cli
from stau_jax import errors
from stau_jax import models
from stau_jax import outputs
from stau_jax import upgrade

FORMAT = 'stau_jax.export'
VERSION = 1


ExportError = errors.ExportError


def save_export(path, params, config):
  """Writes `params` and `config` to `path` atomically (`outputs`).

  Raises ExportError (nothing is written) if a parameter is not finite, and
  outputs.OutputError naming `path` if it cannot be written (missing
  folder, full disk).
  """
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  check_finite(params, source=path)
  params_bytes = serialization.msgpack_serialize(
      serialization.to_state_dict(params))
  payload = serialization.msgpack_serialize({
      'format': FORMAT,
      'version': VERSION,
      'config': config.to_json(),
      'params_sha256': hashlib.sha256(params_bytes).hexdigest(),
      'params': params_bytes,
  })
  outputs.write_bytes(path, payload)


def load_export(path):
  """Reads an export file; returns (params, config), the config upgraded
  (`upgrade.upgrade_config`: files of older versions get the fields added
  since).

  Raises ExportError when the file is missing, not an export file, of an
  unknown version, corrupt (checksum), or its parameters do not match the
  model its config describes.
  """
  params, config = read_export(path)
  check_params(params, config, source=path)
  return params, config


def read_export(path):
  """Reads an export file's (params, config) without checking them against
  the model (`check_params`, e.g. after overriding how the model computes).

  Raises ExportError when the file is missing, not an export file, of an
  unknown version or corrupt (checksum), and when a parameter is not finite.
  """
  if os.path.isdir(path):
    raise ExportError('The export path is a directory', path,
                      'pass an export file (python -m stau_jax.export)')
  if not os.path.exists(path):
    raise ExportError('The export file does not exist', path,
                      'check the path (python -m stau_jax.export writes one)')
  with open(path, 'rb') as f:
    payload = f.read()
  try:
    contents = serialization.msgpack_restore(payload)
  except Exception as e:  # msgpack raises several unrelated types.
    raise ExportError(f'{path!r} is not a readable stau_jax export file '
                      f'(truncated or corrupt?): {e}') from e
  if not isinstance(contents, dict) or contents.get('format') != FORMAT:
    raise ExportError(f'{path!r} is not a stau_jax export file.')
  version = contents.get('version')
  if version != VERSION:
    raise ExportError(f'The export file has format version {version!r} '
                      f'({type(version).__name__}); this stau_jax reads '
                      f'version {VERSION!r} (int)', path,
                      'export it again with this stau_jax')
  missing = [key for key in ('config', 'params_sha256', 'params')
             if key not in contents]
  if missing:
    raise ExportError(f'The export file has no {", ".join(missing)}', path,
                      'export the run again')
  params_bytes = contents['params']
  if (not isinstance(params_bytes, bytes) or
      hashlib.sha256(params_bytes).hexdigest() != contents['params_sha256']):
    raise ExportError(f'{path!r} is corrupt: its parameter checksum does not '
                      f'match.')
  try:
    config = upgrade.upgrade_config(
        ml_collections.ConfigDict(json.loads(contents['config'])))
    params = serialization.msgpack_restore(params_bytes)
  except Exception as e:  # json and msgpack raise several unrelated types.
    raise ExportError(f'Unreadable config or parameters: {e}', path,
                      'export the run again') from e
  check_finite(params, source=path)
  return params, config


def check_finite(params, source='parameters'):
  """Raises ExportError if a parameter holds NaN or inf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not np.all(np.isfinite(leaf)):
      raise ExportError(
          f'Parameter {jax.tree_util.keystr(path)} holds NaN or inf', source,
          'the model diverged; use parameters from an earlier checkpoint')


def check_params(params, config, source='parameters'):
  """Raises ExportError unless `params` has exactly the tree and shapes `config`'s model needs.

  Returns the model (float32), validated and built once.
  """
  try:
    model = models.validate_model_config(config)
    expected = models.param_shapes(config, model)
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise ExportError(f'Invalid config: {type(e).__name__}: {e}', source,
                      'the config must describe the model and its frames '
                      '(model and data sections)') from e
  if not isinstance(params, dict):
    raise ExportError('The parameters are not a tree of arrays', source,
                      'export the run again')
  expected = {jax.tree_util.keystr(path): leaf.shape for path, leaf
              in jax.tree_util.tree_flatten_with_path(expected)[0]}
  actual = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf
            in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in sorted(expected.keys() | actual.keys()):
    if expected.get(name) != actual.get(name):
      raise ExportError(
          f'{source}: parameter {name!r} has shape {actual.get(name)} but the '
          f'model of its config expects {expected.get(name)} (None: absent).')
  return model


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI's flags (only when run as a program: predict and
  evaluate import this module and have flags of the same names)."""
  flags.DEFINE_string('workdir', None, 'Training run directory.')
  flags.DEFINE_integer('step', -1, 'Checkpoint step; -1 for the latest.')
  flags.DEFINE_string('output', None, 'Export file to write.')
  flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  outputs.check_output_paths(output=FLAGS.output)
  params, config = checkpoints.load_params(
      FLAGS.workdir, None if FLAGS.step < 0 else FLAGS.step)
  check_params(params, config, source=FLAGS.workdir)
  save_export(FLAGS.output, params, config)
  print(f'Wrote {FLAGS.output} ({config.name}, '
        f'{models.count_params(params)} parameters).')


if __name__ == '__main__':
  cli.run(main, define_flags)
