r"""Predicts future frames with an export file.

  python -m stau_jax.predict --export=stau_mmnist.export \
      --input=clips.npy --output=future.npy

IN is (N, T, H, W, C) or (N, T, H, W), float in [0, 1] or uint8 (divided by
255), with at least `input_length` frames (later ones are ignored). OUT is
float32 (N, total_length - input_length, H, W, C): the frames after the first
input_length, predicted autoregressively, clipped to [0, 1] unless --noclip.
"""
import functools
import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import models


def load_frames(path):
  """Memory-maps the .npy file of frames at `path`; InputError if unreadable."""
  try:
    return np.load(path, mmap_mode='r')
  except (ValueError, EOFError) as e:  # not .npy, truncated, pickled
    raise errors.InputError(f'Cannot read the frames: {e}', path,
                            'pass a .npy array (N, T, H, W[, C])') from e


def check_inputs(frames, config, with_truth=False):
  """Checks user frames' shape and dtype without reading them.

  Returns frames as (N, T, H, W, C) (a view: a memory-mapped file stays on
  disk); ValueError naming the expected shape otherwise. With `with_truth`,
  requires total_length frames (inputs and the true future), else
  input_length.
  """
  height, width = config.data.image_size
  channels = config.data.channels
  needed = 'total_length' if with_truth else 'input_length'
  length = config.data[needed]
  if frames.ndim == 4:
    frames = frames[..., None]
  expected = f'(N, T>={length}, {height}, {width}, {channels})'
  if frames.ndim != 5:
    raise ValueError(f'Input must be (N, T, H, W, C) or (N, T, H, W); got '
                     f'shape {frames.shape}. Expected {expected}.')
  if frames.shape[2:] != (height, width, channels):
    raise ValueError(f'Input frames are {frames.shape[2:]} (H, W, C) but the '
                     f'model was trained on ({height}, {width}, {channels}); '
                     f'expected {expected}.')
  if not len(frames):
    raise ValueError(f'Input has no sequences; expected {expected}.')
  if frames.shape[1] < length:
    raise ValueError(f'Input has {frames.shape[1]} frames per sequence; it '
                     f'needs at least {needed}={length}.')
  if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype,
                                                     np.floating):
    raise ValueError(f'Input dtype must be uint8 or float; got {frames.dtype}.')
  return frames


def _to_float(frames):
  """uint8 / 255 or checked float frames, as float32."""
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 255
  frames = frames.astype(np.float32)
  if frames.size and not (np.all(np.isfinite(frames)) and frames.min() >= 0
                          and frames.max() <= 1):
    raise ValueError('Float input must be finite and in [0, 1]; got values '
                     f'in [{frames.min()}, {frames.max()}]. Pass uint8 '
                     'frames to have them divided by 255.')
  return frames


def prepare_inputs(frames, config, with_truth=False):
  """Checks and normalizes user frames to float32 (N, input_length, H, W, C) in [0, 1].

  With `with_truth`, keeps (and requires) total_length frames: the inputs and
  the true future frames, for comparing predictions with them.
  """
  frames = check_inputs(np.asarray(frames), config, with_truth)
  length = config.data.total_length if with_truth else config.data.input_length
  return _to_float(frames[:, :length])


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_batch(model, params, observed, num_future):
  padding = jnp.zeros((observed.shape[0], num_future) + observed.shape[2:],
                      observed.dtype)
  predictions = model.apply({'params': params},
                            jnp.concatenate([observed, padding], axis=1))
  return predictions[:, -num_future:]


def predict_batches(params, config, frames, batch_size=16, clip=True):
  """Yields the predictions of frames input_length .. total_length-1, batch
  by batch (float32 (<=batch_size, total_length - input_length, H, W, C)).

  Args:
    params: model parameters (e.g. from `export.load_export`).
    config: the experiment config the parameters belong to.
    frames: see `check_inputs`, e.g. a memory-mapped .npy; each batch is
      read and converted when it is predicted (the last one is padded, so
      only one program is compiled).
    batch_size: sequences per device call.
    clip: clip predictions to [0, 1].
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer; got '
                     f'{batch_size!r}.')
  frames = check_inputs(frames, config)
  model = models.create_model(config)
  input_length = config.data.input_length
  num_future = config.data.total_length - input_length
  for start in range(0, len(frames), batch_size):
    batch = _to_float(np.asarray(frames[start:start + batch_size,
                                        :input_length]))
    size = len(batch)
    batch = np.pad(batch, [(0, batch_size - size)] + [(0, 0)] * 4)
    predictions = np.asarray(
        _predict_batch(model, params, batch, num_future))[:size]
    yield np.clip(predictions, 0, 1) if clip else predictions


def predict(params, config, frames, batch_size=16, clip=True):
  """Predicts frames input_length .. total_length-1 for every sequence.

  Takes the arguments of `predict_batches`; returns float32 (N, total_length
  - input_length, H, W, C).
  """
  outputs = list(predict_batches(params, config, np.asarray(frames),
                                 batch_size, clip))
  height, width = config.data.image_size
  num_future = config.data.total_length - config.data.input_length
  return (np.concatenate(outputs) if outputs else np.zeros(
      (0, num_future, height, width, config.data.channels), np.float32))


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string('input', None, 'Input .npy of frames.')
  flags.DEFINE_string('output', None, 'Output .npy of predictions.')
  flags.DEFINE_integer('batch_size', 16, 'Sequences per batch.',
                       lower_bound=1)
  flags.DEFINE_bool('clip', True, 'Clip predictions to [0, 1].')
  flags.mark_flags_as_required(['export', 'input', 'output'])


def main(argv):
  del argv
  params, config = export.load_export(FLAGS.export)
  frames = check_inputs(load_frames(FLAGS.input), config)
  height, width = config.data.image_size
  shape = (len(frames), config.data.total_length - config.data.input_length,
           height, width, config.data.channels)
  # Written to a temporary file next to the output, so an unwritable output
  # fails before predicting and a failed run leaves no partial file.
  temporary = f'{FLAGS.output}.tmp-{os.getpid()}'
  predictions = np.lib.format.open_memmap(temporary, mode='w+',
                                          dtype=np.float32, shape=shape)
  try:
    start = 0
    for batch in predict_batches(params, config, frames, FLAGS.batch_size,
                                 FLAGS.clip):
      predictions[start:start + len(batch)] = batch
      start += len(batch)
    predictions.flush()
    del predictions
    os.replace(temporary, FLAGS.output)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  print(f'Wrote {FLAGS.output}: {shape} float32.')


if __name__ == '__main__':
  cli.run(main, define_flags)
