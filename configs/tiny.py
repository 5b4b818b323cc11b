"""A small STAU that trains for a few dozen steps in seconds on a CPU.

Used by the tests, the notebook and smoke runs: 2 layers x 8 hidden, 3x3
filters, 16x16 frames with one digit, 4 -> 4 frames.
"""
from configs import mmnist


def get_config():
  """Returns configs/mmnist.py shrunk to a CPU-sized model and run."""
  config = mmnist.get_config()
  config.name = 'tiny'
  config.model.num_layers = 2
  config.model.num_hidden = 8
  config.model.filter_size = 3
  config.model.tau = 2
  config.model.theta = 2
  config.model.num_downsample = 1
  config.data.image_size = (16, 16)
  config.data.input_length = 4
  config.data.total_length = 8
  config.data.num_digits = 1
  config.data.digits = 'bundled'
  config.data.num_test_sequences = 32
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
