"""Something-Something v2, the paper's Table 1 settings.

Clips downsampled to 20 frames of 128x128x3, 10 -> 10 frames (the "front
50%" setting; set --config.data.input_length=5 for "front 25%", 5 -> 15),
16 STAU layers x 64 hidden, 3 down/upsampling layers, gamma = 1. Data: the
dataset's <id>.webm videos (needs PyAV or OpenCV) or <id>/ frame folders,
with its train/validation JSON lists and the labels JSON.
The 16-layer model and the training protocol are configs/base.py's
`real_video_config()`; this file adds the dataset's own fields.
"""
from configs import base


def get_config():
  """Returns the Something-Something v2 experiment config."""
  config = base.real_video_config()
  config.name = 'sthsth'
  config.model.num_downsample = 3
  data = config.data
  data.dataset = 'sthsth'
  data.image_size = (128, 128)
  data.input_length = 10
  data.total_length = 20
  data.data_dir = 'data/sthsth'
  data.train_path = 'videos'  # <id>.webm files or <id>/ frame folders
  data.train_labels = 'something-something-v2-train.json'
  data.test_path = 'videos'
  data.test_labels = 'something-something-v2-validation.json'
  data.label_map = 'something-something-v2-labels.json'
  return config
