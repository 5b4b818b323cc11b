"""Early action recognition on Moving MNIST: an offline demonstration.

One digit on a 32x32 canvas, 12 frames of which the classifier's input sees
the first 4. The label is the wall the digit bounces off next in the 8
unseen frames (top, bottom, left, right, or none:
stau_jax/data/moving_mnist.py `next_wall_labels`), so a predictor that
fills in the future can help. Stage 1 trains the predictor on the same
videos (a 2-layer x 16 STAU, 2 down/upsampling layers: 8x8 hidden grid):

  python -m stau_jax.main --config=configs/mmnist_action.py \
      --workdir=runs/mmnist_action
  python -m stau_jax.export --workdir=runs/mmnist_action \
      --output=mmnist_action.export
  python -m stau_jax.recognize --config=configs/mmnist_action.py \
      --predictor=mmnist_action.export      # or --predictor=none

Stage 2 (recognize) uses the same training fields (num_train_steps, ...);
override them as --config.num_train_steps=N.
"""
import ml_collections

from configs import tiny


def get_config():
  """Returns the Moving MNIST action config (prediction and recognition)."""
  config = tiny.shrunk_mmnist(num_hidden=16, tau=3, image_size=(32, 32),
                              total_length=12, num_test_sequences=500)
  config.name = 'mmnist_action'
  config.eval_batch_size = 50
  config.num_train_steps = 1000
  config.lr_decay_start_step = 1000
  config.lr_decay_every_steps = 1000
  config.sampling_changing_rate = 2e-3
  config.sampling_stop_step = 500
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.eval_metrics = 'mse,psnr,ssim'
  config.classifier = ml_collections.ConfigDict()
  config.classifier.num_classes = 5  # moving_mnist.NEXT_WALL_CLASSES
  config.classifier.features = (32, 64)  # channels of the 3D conv blocks
  return config
