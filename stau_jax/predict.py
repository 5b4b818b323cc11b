r"""Predicts future frames with an export file.

  python -m stau_jax.predict --export=stau_mmnist.export \
      --input=clips.npy --output=future.npy
  python -m stau_jax.predict --export=my_videos.export \
      --input=clip.mp4 [--start=30] [--resize] --output=future.npy \
      [--gif=future.gif]

IN is an .npy (N, T, H, W, C) or (N, T, H, W), float in [0, 1] or uint8
(divided by 255), or one video file (.mp4, .avi, .mov, .webm, .mkv, .mpg) or
folder of frames: one sequence. It needs at least `input_length` frames
after --start (later ones are ignored). Frames must have the export's size;
--resize center-crops and resizes a video's frames to it. OUT is float32 (N,
total_length - input_length, H, W, C): the frames after the observed ones,
predicted autoregressively, clipped to [0, 1] unless --noclip. --gif
animates the first sequence: its inputs then the prediction, beside the
true frames when the input is long enough to hold them.
"""
import functools
import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import models
from stau_jax import outputs
from stau_jax import pictures
from stau_jax.data import video


def load_frames(path):
  """Memory-maps the .npy file of frames at `path`; InputError if unreadable."""
  try:
    return np.load(path, mmap_mode='r', allow_pickle=False)
  except (ValueError, EOFError) as e:  # not .npy, truncated, pickled
    raise errors.InputError(f'Cannot read the frames: {e}', path,
                            'pass a .npy array (N, T, H, W[, C])') from e


def is_video_input(path):
  """True for a video file or a folder of frames (not an .npy)."""
  return os.path.isdir(path) or path.lower().endswith(video.VIDEO_EXTENSIONS)


def read_video_input(path):
  """uint8 (T, H, W, 3) frames of a video file or of a folder of frames."""
  if not os.path.exists(path):
    raise errors.InputError('No such video file or folder', path)
  if os.path.isdir(path):
    files = video.image_files(path)
    if not files:
      raise errors.InputError(
          'The folder holds no image files', path,
          f'pass a folder of {", ".join(video.IMAGE_EXTENSIONS)} frames')
    frames = [np.asarray(Image.open(f).convert('RGB')) for f in files]
    sizes = sorted({f.shape for f in frames})
    if len(sizes) > 1:
      raise errors.InputError(f'The frames have different sizes {sizes[:3]}',
                              path, 'give every frame the same size')
    return np.stack(frames)
  try:
    frames = list(video.iterate_video(path))
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.InputError(f'Cannot decode the video ({e})', path,
                            'pass a readable video file') from e
  if not frames:
    raise errors.InputError('The video has no frames', path)
  return np.stack(frames)


def fit_frames(frames, config, resize=False, path=None):
  """uint8 (T, h, w, 3) RGB frames at the export's size and channels.

  Refuses another frame size unless `resize`: then each frame is
  center-cropped to the aspect of config.data.image_size and resized to it,
  as training does. Channels 1 takes the frames' luminance.
  """
  height, width = config.data.image_size
  if frames.shape[1:3] != (height, width):
    if not resize:
      raise errors.InputError(
          f'Input frames are {frames.shape[1]}x{frames.shape[2]} but the model '
          f'was trained on {height}x{width}', path,
          'pass --resize to center-crop and resize them')
    h, w = frames.shape[1:3]
    crop_h, crop_w = min(h, round(w * height / width)), min(
        w, round(h * width / height))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    frames = np.stack([np.asarray(Image.fromarray(
        f[top:top + crop_h, left:left + crop_w]).resize(
            (width, height), Image.BILINEAR)) for f in frames])
  if config.data.channels == 1:
    return np.stack([np.asarray(Image.fromarray(f).convert('L'))
                     for f in frames])[..., None]
  return frames


def read_input(path, config, start=0, resize=False):
  """The frames of --input from frame `start`: (N, T, H, W[, C]).

  An .npy is memory-mapped (`load_frames`); a video file or frames folder is
  one sequence (N = 1), decoded and fitted to the export (`fit_frames`).
  """
  if not isinstance(start, int) or start < 0:
    raise errors.InputError(f'--start={start} must be a frame index >= 0')
  if not is_video_input(path):
    if resize:
      raise errors.InputError(
          '--resize applies to a video file or frames folder', path,
          'resize the .npy frames to the export\'s size beforehand')
    return load_frames(path)[:, start:]
  frames = read_video_input(path)
  if start >= len(frames):
    raise errors.InputError(f'--start={start} is past the video\'s '
                            f'{len(frames)} frames', path)
  return fit_frames(frames[start:], config, resize, path)[None]


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


def save_prediction_gif(path, frames, predictions, config):
  """Animates one sequence (`pictures.save_gif`): frames (T, H, W, C) of the
  input from the first observed one, predictions (F, H, W, C); the true
  future is shown when T >= total_length."""
  input_length, total = config.data.input_length, config.data.total_length
  frames = _to_float(np.asarray(frames[:total]))
  if len(frames) < total:
    frames = frames[:input_length]
  with outputs.atomic_path(path) as temporary:
    pictures.save_gif(temporary, frames, predictions, input_length,
                      scale=pictures.auto_scale(frames.shape[1:3]))


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string('input', None, 'Input .npy of frames, or a video file '
                      'or folder of frames (one sequence).')
  flags.DEFINE_integer('start', 0, 'First frame of the input used: the '
                       'observed frames are start .. start + input_length - '
                       '1.', lower_bound=0)
  flags.DEFINE_bool('resize', False, "Center-crop and resize a video's frames "
                    "to the export's frame size.")
  flags.DEFINE_string('output', None, 'Output .npy of predictions.')
  flags.DEFINE_string('gif', None, 'Also write the first sequence as an '
                      'animated GIF: its inputs then the prediction, beside '
                      'the true frames when the input holds them.')
  flags.DEFINE_integer('batch_size', 16, 'Sequences per batch.',
                       lower_bound=1)
  flags.DEFINE_bool('clip', True, 'Clip predictions to [0, 1].')
  flags.mark_flags_as_required(['export', 'input', 'output'])


def main(argv):
  del argv
  outputs.check_output_paths(
      suffixes={'gif': ('.gif',)},
      inputs={'export': FLAGS.export, 'input': FLAGS.input},
      output=FLAGS.output, gif=FLAGS.gif)
  params, config = export.load_export(FLAGS.export)
  frames = check_inputs(read_input(FLAGS.input, config, FLAGS.start,
                                  FLAGS.resize), config)
  height, width = config.data.image_size
  shape = (len(frames), config.data.total_length - config.data.input_length,
           height, width, config.data.channels)
  # Written batch by batch to a temporary file beside the output: a failed
  # run (a full disk included) leaves no partial file.
  with outputs.atomic_path(FLAGS.output) as temporary:
    first = None
    with open(temporary, 'wb') as f:
      np.lib.format.write_array_header_1_0(f, {
          'descr': np.lib.format.dtype_to_descr(np.dtype(np.float32)),
          'fortran_order': False, 'shape': shape})
      for batch in predict_batches(params, config, frames, FLAGS.batch_size,
                                   FLAGS.clip):
        first = batch[0] if first is None else first
        f.write(np.ascontiguousarray(batch, np.float32).tobytes())
  print(f'Wrote {FLAGS.output}: {shape} float32.')
  if FLAGS.gif:
    save_prediction_gif(FLAGS.gif, frames[0], first, config)
    print(f'Wrote {FLAGS.gif}.')


if __name__ == '__main__':
  cli.run(main, define_flags)
