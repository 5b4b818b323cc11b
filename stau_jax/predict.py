r"""Predicts future frames with an export file.

  python -m stau_jax.predict --export=stau_mmnist.export \
      --input=clips.npy --output=future.npy

IN is (N, T, H, W, C) or (N, T, H, W), float in [0, 1] or uint8 (divided by
255), with at least `input_length` frames (later ones are ignored). OUT is
float32 (N, total_length - input_length, H, W, C): the frames after the first
input_length, predicted autoregressively, clipped to [0, 1] unless --noclip.
"""
import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import export
from stau_jax import models


def prepare_inputs(frames, config, with_truth=False):
  """Checks and normalizes user frames to float32 (N, input_length, H, W, C) in [0, 1].

  With `with_truth`, keeps (and requires) total_length frames: the inputs and
  the true future frames, for comparing predictions with them.
  """
  frames = np.asarray(frames)
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
  if frames.shape[1] < length:
    raise ValueError(f'Input has {frames.shape[1]} frames per sequence; it '
                     f'needs at least {needed}={length}.')
  if frames.dtype == np.uint8:
    frames = frames.astype(np.float32) / 255
  elif np.issubdtype(frames.dtype, np.floating):
    frames = frames.astype(np.float32)
    if frames.size and not (np.all(np.isfinite(frames)) and frames.min() >= 0
                            and frames.max() <= 1):
      raise ValueError('Float input must be finite and in [0, 1]; got values '
                       f'in [{frames.min()}, {frames.max()}]. Pass uint8 '
                       'frames to have them divided by 255.')
  else:
    raise ValueError(f'Input dtype must be uint8 or float; got {frames.dtype}.')
  return frames[:, :length]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_batch(model, params, observed, num_future):
  padding = jnp.zeros((observed.shape[0], num_future) + observed.shape[2:],
                      observed.dtype)
  predictions = model.apply({'params': params},
                            jnp.concatenate([observed, padding], axis=1))
  return predictions[:, -num_future:]


def predict(params, config, frames, batch_size=16, clip=True):
  """Predicts frames input_length .. total_length-1 for every sequence.

  Args:
    params: model parameters (e.g. from `export.load_export`).
    config: the experiment config the parameters belong to.
    frames: see `prepare_inputs`; N may be large, batches run internally
      (the last one padded, so only one program is compiled).
    batch_size: sequences per device call.
    clip: clip predictions to [0, 1].

  Returns:
    float32 (N, total_length - input_length, H, W, C).
  """
  observed = prepare_inputs(frames, config)
  model = models.create_model(config)
  num_future = config.data.total_length - config.data.input_length
  outputs = []
  for start in range(0, len(observed), batch_size):
    batch = observed[start:start + batch_size]
    size = len(batch)
    batch = np.pad(batch, [(0, batch_size - size)] + [(0, 0)] * 4)
    outputs.append(np.asarray(
        _predict_batch(model, params, batch, num_future))[:size])
  height, width = config.data.image_size
  result = (np.concatenate(outputs) if outputs else np.zeros(
      (0, num_future, height, width, config.data.channels), np.float32))
  return np.clip(result, 0, 1) if clip else result


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string('input', None, 'Input .npy of frames.')
  flags.DEFINE_string('output', None, 'Output .npy of predictions.')
  flags.DEFINE_integer('batch_size', 16, 'Sequences per batch.')
  flags.DEFINE_bool('clip', True, 'Clip predictions to [0, 1].')
  flags.mark_flags_as_required(['export', 'input', 'output'])


def main(argv):
  del argv
  params, config = export.load_export(FLAGS.export)
  frames = np.load(FLAGS.input, mmap_mode='r')
  predictions = predict(params, config, frames, FLAGS.batch_size, FLAGS.clip)
  np.save(FLAGS.output, predictions)
  print(f'Wrote {FLAGS.output}: {predictions.shape} float32.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
