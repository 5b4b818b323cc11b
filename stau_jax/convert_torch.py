r"""Converts a checkpoint of the authors' PyTorch STAU/MAU code to an export file.

  python -m stau_jax.convert_torch --checkpoint=model.ckpt-80000 \
      --config=configs/mmnist.py --output=stau_mmnist.export

The checkpoint is what their code saves, torch.save({'net_param':
state_dict}); a bare state_dict works too. The config must describe the same
architecture (override it as --config.model.cell=mau, etc.). The conversion
itself (`convert_state_dict`) works on a dict of numpy arrays, so only
reading the .ckpt file needs torch (pip install -e ".[torch]").
"""
import os
import re

from absl import flags
import numpy as np
from ml_collections import config_flags

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import models

FLAGS = flags.FLAGS

# Layers the reference defines but its forward pass never uses.
UNUSED_PREFIXES = ('merge.', 'conv_last_sr.')
# PyTorch layout -> ours: conv OIHW -> HWIO; transposed conv (in, out, kh, kw)
# -> (kh, kw, out, in), which flax applies as the gradient of a conv with
# the spatially flipped kernel (transpose_kernel=True), as PyTorch does;
# LayerNorm (C, h, w) -> (h, w, C).
_CONV = (2, 3, 1, 0)
_NORM = (1, 2, 0)
_CELL_CONVS = ('conv_t', 'conv_t_next', 'conv_s', 'conv_s_next')


def _layout(config):
  """Yields (our parameter path, torch keys, permutation) for every leaf.

  Cell parameters are stacked over layers, so they list one key per layer.
  """
  num_layers = config.model.num_layers
  n = config.model.num_downsample
  yield ('encoder', 'embed'), 'encoders.0.encoder_t_conv-1', _CONV
  for i in range(n):
    yield ('encoder', f'down_{i}'), f'encoders.{i + 1}.encoder_t{i}', _CONV
    yield ('decoder', f'up_{i}'), f'decoders.{i}.c_decoder{i}', _CONV
  yield ('decoder', 'readout'), 'srcnn.0', _CONV
  for conv in _CELL_CONVS:
    prefixes = [f'cell_list.{k}.{conv}' for k in range(num_layers)]
    yield ('cells', 'cell', conv, 'conv'), [p + '.0' for p in prefixes], _CONV
    yield ('cells', 'cell', conv, 'norm'), [p + '.1' for p in prefixes], _NORM


_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


def convert_state_dict(state_dict, config):
  """Maps a reference state_dict (name -> numpy array) to stau_jax params.

  Raises ValueError naming the key for a missing key, a shape mismatch (both
  shapes, in PyTorch layout) or keys the config's model does not have.
  """
  state_dict = {re.sub(r'^module\.', '', k): np.asarray(v, np.float32)
                for k, v in state_dict.items()}
  for key, value in sorted(state_dict.items()):
    if not np.all(np.isfinite(value)):
      raise ValueError(f'Checkpoint key {key!r} holds NaN or inf: the model '
                       f'it was saved from had diverged; convert an earlier '
                       f'checkpoint.')
  expected = models.param_shapes(config)['unroll']
  used = set()

  def take(key, perm, shape):
    torch_shape = tuple(shape[perm.index(axis)] for axis in range(len(perm)))
    if key not in state_dict:
      raise ValueError(f'Checkpoint is missing key {key!r} (expected shape '
                       f'{torch_shape}); is the config the same architecture '
                       f'(model.cell, num_layers, num_downsample)?')
    value = state_dict[key]
    if value.shape != torch_shape:
      raise ValueError(f'Checkpoint key {key!r} has shape {value.shape} but '
                       f'the config\'s model expects {torch_shape}.')
    used.add(key)
    return value.transpose(perm)

  params = {}
  for path, keys, perm in _layout(config):
    module = expected
    for name in path:
      module = module[name]
    target = params
    for name in path[:-1]:
      target = target.setdefault(name, {})
    converted = {}
    for leaf, spec in module.items():
      stacked = isinstance(keys, list)
      shape = spec.shape[1:] if stacked else spec.shape
      leaf_perm = perm if len(shape) > 1 else (0,)
      if stacked:
        converted[leaf] = np.stack([
            take(f'{key}.{_TORCH_LEAF[leaf]}', leaf_perm, shape)
            for key in keys])
      else:
        converted[leaf] = take(f'{keys}.{_TORCH_LEAF[leaf]}', leaf_perm, shape)
    target[path[-1]] = converted
  unexpected = sorted(k for k in state_dict.keys() - used
                      if not k.startswith(UNUSED_PREFIXES))
  if unexpected:
    raise ValueError(f'Checkpoint has keys the config\'s model does not: '
                     f'{unexpected[:8]}{" ..." if len(unexpected) > 8 else ""}'
                     f'; check model.num_layers and model.num_downsample.')
  return {'unroll': params}


def load_torch_state_dict(path):
  """Reads a reference checkpoint into a dict of numpy arrays (needs torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError('Reading a PyTorch checkpoint needs torch', path,
                            'pip install -e ".[torch]"') from e
  if not os.path.isfile(path):
    raise errors.InputError('No such PyTorch checkpoint', path,
                            'check --checkpoint')
  try:
    # weights_only: never runs code from the file (malicious pickles).
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for bad files.
    raise errors.InputError(
        f'Cannot read the PyTorch checkpoint ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else "empty or truncated"})',
        path, 'pass a file saved by the authors\' code with torch.save') from e
  state_dict = (checkpoint.get('net_param', checkpoint)
                if isinstance(checkpoint, dict) else checkpoint)
  if not isinstance(state_dict, dict) or not all(
      isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise errors.InputError(
        'The PyTorch checkpoint holds no state_dict of tensors', path,
        "pass what the authors' code saves, {'net_param': state_dict}")
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def convert_checkpoint(checkpoint, config, output):
  """Reads a reference .ckpt, converts it and writes the export file."""
  params = convert_state_dict(load_torch_state_dict(checkpoint), config)
  export.save_export(output, params, config)
  print(f'Wrote {output}: {models.count_params(params):,} parameters, cell={config.model.cell}.')


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  config_flags.DEFINE_config_file('config', 'configs/mmnist.py',
                                  'Config describing the architecture.')
  flags.DEFINE_string('checkpoint', None,
                      'PyTorch checkpoint saved by the authors\' code.')
  flags.DEFINE_string('output', None, 'Export file to write.')
  flags.mark_flags_as_required(['checkpoint', 'output'])


def main(argv):
  del argv
  convert_checkpoint(FLAGS.checkpoint, FLAGS.config, FLAGS.output)


if __name__ == '__main__':
  cli.run(main, define_flags)
