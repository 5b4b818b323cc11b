r"""Converts a PyTorch checkpoint (the authors' STAU/MAU, OpenSTL) to an export file.

  python -m stau_jax.convert_torch --checkpoint=model.ckpt-80000 \
      --config=configs/mmnist.py --output=stau_mmnist.export

The checkpoint is what the authors' code saves, torch.save({'net_param':
state_dict}), an OpenSTL checkpoint (a plain state_dict, or Lightning's
{'state_dict': ...} with keys prefixed 'model.'), or a bare state_dict;
fp16/bf16 weights are read as float32 and nothing is unpickled. The
config must describe the same architecture (override it as
--config.model.cell=predrnn --config.model.frontend=patch ...). The conversion
itself (`convert_state_dict`) works on a dict of numpy arrays, so only
reading the .ckpt file needs torch (pip install -e ".[torch]").
"""
import os
import re

from absl import flags
import numpy as np

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import models
from stau_jax import outputs
from stau_jax.models import registry

FLAGS = flags.FLAGS

_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


def _frontend_key(path, frontend):
  """Torch key of an encoder/decoder parameter: the authors' STAU names, or
  OpenSTL's `conv_last` for the 'patch' front-end's readout."""
  module, name, leaf = path
  if frontend == 'patch':
    return f'conv_last.{_TORCH_LEAF[leaf]}'
  if name == 'embed':
    prefix = 'encoders.0.encoder_t_conv-1'
  elif name == 'readout':
    prefix = 'srcnn.0'
  else:
    i = int(name.split('_')[1])
    prefix = (f'encoders.{i + 1}.encoder_t{i}' if module == 'encoder'
              else f'decoders.{i}.c_decoder{i}')
  return f'{prefix}.{_TORCH_LEAF[leaf]}'


def _torch_layout(leaf, ndim):
  """Permutation from a torch parameter to ours: conv kernels (O, I, *k) and
  transposed-conv kernels (I, O, *k) -> (*k, I, O) / (*k, O, I); LayerNorm
  (C, h, w) -> (h, w, C); vectors unchanged."""
  if ndim == 1:
    return (0,)
  if leaf == 'kernel':
    return tuple(range(2, ndim)) + (1, 0)
  return tuple(range(1, ndim)) + (0,)


def _conv3d_as_conv2d(kernel):
  """A Conv3d kernel (O, I, kD, kh, kw) as our 2-D kernel (kh, kw, kD*I, O).

  A 3-D conv whose depth kernel spans the input's whole depth (or is 1) is
  the 2-D conv of the depth slices concatenated depth-major on channels
  (E3D-LSTM's window convolutions and readout, models/e3dlstm.py).
  """
  kernel = kernel.transpose(3, 4, 2, 1, 0)
  return kernel.reshape(kernel.shape[:2] + (-1, kernel.shape[-1]))


def _leaves(tree, path=()):
  """(path, leaf) for every leaf of a nested dict, in sorted order."""
  for name in sorted(tree):
    if isinstance(tree[name], dict):
      yield from _leaves(tree[name], path + (name,))
    else:
      yield path + (name,), tree[name]


def convert_state_dict(state_dict, config):
  """Maps a reference state_dict (name -> numpy array) to stau_jax params.

  Works for the authors' STAU/MAU and for OpenSTL's units: each unit's
  `torch_key` (models/registry.py) names its layers' parameters; those of
  its auxiliary loss (e.g. PredRNN-v2's adapter) are named as the reference
  model's top-level attributes. Raises ValueError naming the key for a
  missing key, a shape mismatch (both shapes, in PyTorch layout) or keys the
  config's model does not have.
  """
  models.validate_model_config(config)
  state_dict = {re.sub(r'^((module|model)\.)+', '', k): np.asarray(v, np.float32)
                for k, v in state_dict.items()}
  for key, value in sorted(state_dict.items()):
    if not np.all(np.isfinite(value)):
      raise ValueError(f'Checkpoint key {key!r} holds NaN or inf: the model '
                       f'it was saved from had diverged; convert an earlier '
                       f'checkpoint.')
  model = models.create_model(config)
  expected = models.param_shapes(config)
  unit = registry.get(config.model.cell)
  frontend = config.model.frontend
  first_layer, offset = {}, 0
  for group in model.groups:
    first_layer[group.name] = offset
    offset += group.count
  used = set()

  def take(key, shape, leaf):
    perm = _torch_layout(leaf, len(shape))
    torch_shape = tuple(shape[perm.index(axis)] for axis in range(len(perm)))
    if key not in state_dict:
      raise ValueError(f'Checkpoint is missing key {key!r} (expected shape '
                       f'{torch_shape}); is the config the same architecture '
                       f'(model.cell, num_layers, num_hidden, num_downsample, '
                       f'patch_size, frontend, layer_norm)?')
    value = state_dict[key]
    if leaf == 'kernel' and value.ndim == len(shape) + 1:
      converted = _conv3d_as_conv2d(value)
    else:
      converted = value.transpose(perm) if value.shape == torch_shape else None
    if converted is None or converted.shape != tuple(shape):
      raise ValueError(f'Checkpoint key {key!r} has shape {value.shape} but '
                       f'the config\'s model expects {torch_shape}.')
    used.add(key)
    return converted

  params = {}
  for path, spec in _leaves(expected):
    if path[0] == 'auxiliary_loss':
      key = '.'.join(path[1:-1] + (_TORCH_LEAF[path[-1]],))
      value = take(key, spec.shape, path[-1])
    elif path[1] in ('encoder', 'decoder'):
      value = take(_frontend_key(path[1:], frontend), spec.shape, path[-1])
    else:
      group, inner = path[1], path[2:]
      value = np.stack([
          take(unit.torch_key(inner, first_layer[group] + i), spec.shape[1:],
               path[-1]) for i in range(spec.shape[0])])
    target = params
    for name in path[:-1]:
      target = target.setdefault(name, {})
    target[path[-1]] = value
  unexpected = sorted(k for k in state_dict.keys() - used
                      if not re.match(unit.unused_torch_keys, k))
  if unexpected:
    raise ValueError(f'Checkpoint has keys the config\'s model does not: '
                     f'{unexpected[:8]}{" ..." if len(unexpected) > 8 else ""}'
                     f'; check model.num_layers and model.num_downsample.')
  return params


def load_torch_state_dict(path):
  """Reads a PyTorch checkpoint into a dict of numpy arrays (needs torch).

  Accepts every layout `unwrap_state_dict` unwraps; float16 and bfloat16
  tensors become float32. Only tensors and plain Python values are read
  (torch.load(weights_only=True)): a file holding other Python objects is
  refused, never unpickled.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError('Reading a PyTorch checkpoint needs torch', path,
                            'pip install -e ".[torch]"') from e
  if not os.path.isfile(path):
    raise errors.InputError(
        f'The PyTorch checkpoint {errors.not_a_file(path)}', path,
                            'check --checkpoint')
  try:
    # weights_only: never runs code from the file (malicious pickles).
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for bad files.
    message = str(e)
    found = re.search(r'Unsupported global: GLOBAL (\S+)', message)
    if found:
      raise errors.InputError(
          f'The PyTorch checkpoint holds a Python object ({found.group(1)}) '
          'besides tensors; stau_jax reads only tensors and never unpickles',
          path, 'if you trust the file, save just its state_dict, still '
          'loading it weights-only with that one class allowed: '
          f'torch.serialization.add_safe_globals([{found.group(1)}]); '
          'torch.save(torch.load(FILE, weights_only=True)["state_dict"], '
          '"weights.pt")') from e
    raise errors.InputError(
        f'Cannot read the PyTorch checkpoint ({type(e).__name__}: '
        f'{message.splitlines()[0] if message else "empty or truncated"})',
        path, 'pass a file saved with torch.save (the authors\' code, OpenSTL)') from e
  state_dict = unwrap_state_dict(checkpoint)
  if not isinstance(state_dict, dict) or not state_dict or not all(
      isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise errors.InputError(
        'The PyTorch checkpoint holds no state_dict of tensors', path,
        "pass a state_dict, the authors' {'net_param': state_dict} or a "
        "Lightning checkpoint {'state_dict': ...}")
  return {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()
          for k, v in state_dict.items()}


def unwrap_state_dict(checkpoint):
  """The state_dict inside a loaded checkpoint: under 'net_param' (the
  authors' code), 'state_dict' (Lightning, OpenSTL), or the checkpoint
  itself (a plain state_dict). Key prefixes 'model.' (Lightning) and
  'module.' (DataParallel) are removed by `convert_state_dict`."""
  for wrapper in ('net_param', 'state_dict'):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper),
                                                   dict):
      return checkpoint[wrapper]
  return checkpoint


def convert_checkpoint(checkpoint, config, output):
  """Reads a reference .ckpt, converts it and writes the export file."""
  outputs.check_output_paths(inputs={'checkpoint': checkpoint}, output=output)
  params = convert_state_dict(load_torch_state_dict(checkpoint), config)
  export.save_export(output, params, config)
  print(f'Wrote {output}: {models.count_params(params):,} parameters, cell={config.model.cell}.')


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  cli.define_config_file('config', 'configs/mmnist.py',
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
