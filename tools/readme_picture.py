r"""The README's picture: a small STAU trained here, its prediction and attention.

  python -m tools.readme_picture [--workdir=runs/readme_picture \
      --output=docs/stau_prediction.png --index=0 --config=configs/tiny.py]

trains `picture_config()` (one bundled MNIST digit on 32x32 frames, 4 -> 8
frames, a 2-layer x 32 STAU: 8 to 15 minutes on a 2-core CPU, offline) in
--workdir, resuming or reusing a finished run there, and writes one PNG:
test sequence --index as rows of inputs, truth, prediction and |error|,
above the temporal (alpha) and spatial (beta) attention weights of that
prediction (visualize.attention_maps). --config trains another experiment
instead (with --config.field=value overrides).
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from configs import tiny
from stau_jax import cli
from stau_jax import data
from stau_jax import outputs
from stau_jax import pictures
from stau_jax import train
from stau_jax import visualize

_GAP = 8  # white pixels between the strip and the attention maps


def picture_config():
  """configs/tiny.py's shrunk Moving MNIST, sized for a picture a CPU trains.

  One bundled digit on 32x32 frames (2 down/upsampling layers: an 8x8 hidden
  grid), 4 frames in and 8 out, 2 STAU layers x 32 channels, tau = theta = 3;
  2,000 steps of batch 8 with scheduled sampling down to 0 by step 1,500.
  """
  config = tiny.shrunk_mmnist(num_hidden=32, tau=3, image_size=(32, 32),
                              total_length=12, num_test_sequences=200)
  config.name = 'readme_picture'
  config.batch_size = 8
  config.eval_batch_size = 50
  config.num_train_steps = 2000
  config.lr_decay_start_step = 2000
  config.sampling_changing_rate = 1 / 1500
  config.sampling_stop_step = 1500
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 500
  config.log_every_steps = 100
  return config


def _stack(images):
  """uint8 (H_i, W_i, 3) images one above the other, centred on white."""
  width = max(image.shape[1] for image in images)
  rows = []
  for image in images:
    if rows:
      rows.append(np.full((_GAP, width, 3), 255, np.uint8))
    left = (width - image.shape[1]) // 2
    row = np.full((image.shape[0], width, 3), 255, np.uint8)
    row[:, left:left + image.shape[1]] = image
    rows.append(row)
  return np.concatenate(rows)


def draw(params, config, frames):
  """The picture of one sequence as uint8 (H, W, 3).

  Args:
    params: model parameters of `config`.
    config: experiment config.
    frames: (T >= total_length, H, W, C) float frames in [0, 1].

  Returns:
    `pictures.frame_strip` of the sequence (frames upscaled to >= 64 pixels,
    rows labelled), centred above `visualize.attention_maps` of it.
  """
  input_length = config.data.input_length
  frames = np.asarray(frames, np.float32)[:config.data.total_length]
  collected = visualize.collect_records(params, config, frames)
  scale = max(1, -(-64 // min(frames.shape[1:3])))
  strip = pictures.frame_strip(frames[:input_length], frames[input_length:],
                               collected['predictions'], scale=scale,
                               labels=True)
  strip = np.broadcast_to(strip, strip.shape[:2] + (3,))
  maps = visualize.attention_maps(collected['records'],
                                  collected['declared'], input_length)
  return _stack([strip, maps])


FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags (only when run as a program)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file; default: picture_config().',
      lock_config=True)
  flags.DEFINE_string('workdir', 'runs/readme_picture',
                      'Training run (resumed, or reused when finished).')
  flags.DEFINE_string('output', 'docs/stau_prediction.png', 'The PNG to write.')
  flags.DEFINE_integer('index', 0, 'Test sequence to draw.', lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  outputs.check_output_paths(output=FLAGS.output,
                             suffixes={'output': ('.png',)})
  config = FLAGS.config or picture_config()
  test_set = data.load_test_set(config)
  frames = np.concatenate([batch['frames'][batch['valid']] for batch in
                           test_set.batches(config.eval_batch_size)])
  if FLAGS.index >= len(frames):
    raise app.UsageError(f'--index={FLAGS.index} is outside the '
                         f'{len(frames)} test sequences.')
  logging.get_absl_handler().addFilter(cli.drop_orbax_info)
  state = train.train_and_evaluate(config, FLAGS.workdir)
  image = draw(state.params, config, frames[FLAGS.index])
  with outputs.atomic_path(FLAGS.output) as temporary:
    pictures.save_png(temporary, image)
  print(f'Wrote {FLAGS.output} (test sequence {FLAGS.index} of '
        f'{FLAGS.workdir}).')


if __name__ == '__main__':
  cli.run(main, define_flags)
