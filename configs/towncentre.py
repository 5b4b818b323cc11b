"""TownCentreXVID, the paper's Table 1 settings.

Full 1088x1920x3 frames (the 1080p video center-cropped/resized to a size
that 4 down/upsampling layers divide), 4 -> 1 frames for training and 4 -> 4
for testing, 16 STAU layers x 64 hidden, 4 down/upsampling layers, gamma = 1.
The first 4,000 frames train, the last 3,500 test. Data (data.video_path):
the video file (decoded once into a PNG frame cache; needs `pip install
av`) or a folder of its frames.
The 16-layer model and the training protocol are configs/base.py's
`real_video_config()`; this file adds the dataset's own fields.
"""
from configs import base


def get_config():
  """Returns the TownCentreXVID experiment config."""
  config = base.real_video_config()
  config.name = 'towncentre'
  config.model.num_downsample = 4
  data = config.data
  data.dataset = 'towncentre'
  data.image_size = (1088, 1920)
  data.input_length = 4
  data.total_length = 5
  data.test_total_length = 8
  data.data_dir = 'data/towncentre'
  data.video_path = 'frames'  # folder of TownCentreXVID.avi's frames
  data.num_train_frames = 4000
  data.num_test_frames = 3500
  config.batch_size = 4
  config.eval_batch_size = 4
  config.eval_metrics += ',lpips'  # the paper's Table 5 metrics
  return config
