"""Early action recognition on Something-Something v2 (paper Table 9).

The predictor is configs/sthsth.py's (16 STAU layers x 64 hidden, 3
down/upsampling layers, 20 frames of 128x128): its top layer's 19 hidden
states, 19 x 16 x 16 x 64, feed a 3D-conv classifier of the 174 classes.
Observed front: 10 frames (50%), or 5 (25%) with
--config.data.input_length=5; train the predictor with the same value:

  python -m stau_jax.main --config=configs/sthsth_action.py \
      --config.data.input_length=5 --workdir=runs/sthsth_action_5
  python -m stau_jax.export --workdir=runs/sthsth_action_5 \
      --output=sthsth_action_5.export
  python -m stau_jax.recognize --config=configs/sthsth_action.py \
      --config.data.input_length=5 --predictor=sthsth_action_5.export
"""
import ml_collections

from configs import sthsth


def get_config():
  """Returns the Something-Something v2 action config."""
  config = sthsth.get_config()
  config.name = 'sthsth_action'
  config.classifier = ml_collections.ConfigDict()
  config.classifier.num_classes = 174
  config.classifier.features = (128, 256, 512)  # channels of the 3D conv blocks
  return config
