"""The paper's Moving MNIST setup (STAU paper Table 1; the authors' mnist_configs).

4 STAU layers x 64 hidden channels, 5x5 filters, tau = theta = 5, two
down/upsampling layers (64x64 frames -> 16x16 grid), 10 -> 10 frames of two
digits. Training follows the reference protocol (configs/base.py): Adam 1e-3,
batch 16, 150,000 steps, scheduled sampling from 1.0 down by 2e-5 per step
until step 50,000, then the learning rate x0.9 every 2,000 steps.
"""
from configs import base


def get_config():
  """Returns the full experiment config (model, data, training)."""
  config = base.shared_config()
  config.name = 'mmnist'
  config.model.num_layers = 4
  config.model.num_downsample = 2
  config.model.residual = False
  data = config.data
  data.dataset = 'moving_mnist'
  data.image_size = (64, 64)
  data.channels = 1
  data.input_length = 10
  data.total_length = 20
  data.num_digits = 2
  data.digits = 'auto'  # auto | tfds | bundled
  data.test_set = 'generated'  # official | generated | path/to/mnist_test_seq.npy
  data.num_test_sequences = 10000  # of the generated test set
  data.test_seed = 1234  # seed of the generated test set
  return config
