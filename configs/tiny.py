"""A small STAU that trains for a few dozen steps in seconds on a CPU.

Used by the tests, the notebook and smoke runs: 2 layers x 8 hidden, 3x3
filters, 16x16 frames with one digit, 4 -> 4 frames.
"""
from configs import mmnist


def shrunk_mmnist(*, num_hidden, tau, image_size, total_length,
                  num_test_sequences):
  """Returns configs/mmnist.py shrunk for CPUs (tiny and mmnist_action).

  2 STAU layers of 3x3 filters with tau = theta, 4 input frames of one
  bundled digit (no download); the arguments are what the two differ in.
  """
  config = mmnist.get_config()
  model = config.model
  model.num_layers = 2
  model.num_hidden = num_hidden
  model.filter_size = 3
  model.tau = model.theta = tau
  data = config.data
  data.image_size = image_size
  data.input_length = 4
  data.total_length = total_length
  data.num_digits = 1
  data.digits = 'bundled'
  data.num_test_sequences = num_test_sequences
  return config


def get_config():
  """Returns configs/mmnist.py shrunk to a CPU-sized model and run."""
  config = shrunk_mmnist(num_hidden=8, tau=2, image_size=(16, 16),
                         total_length=8, num_test_sequences=32)
  config.name = 'tiny'
  config.model.num_downsample = 1
  config.batch_size = 4
  config.eval_batch_size = 8
  config.num_train_steps = 40
  config.lr_decay_start_step = 20
  config.lr_decay_every_steps = 10
  config.sampling_changing_rate = 0.02
  config.sampling_stop_step = 20
  config.r_sampling_step_1 = 10
  config.r_sampling_step_2 = 20
  config.r_exp_alpha = 5
  config.eval_every_steps = 20
  config.num_eval_batches = 2
  config.checkpoint_every_steps = 10
  config.log_every_steps = 10
  return config
