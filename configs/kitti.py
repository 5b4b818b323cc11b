"""KITTI (train) / Caltech Pedestrian (test), the paper's Table 1 settings.

128x160x3 frames (center-cropped and resized), 10 -> 1 frames for training
and 10 -> 10 for testing, 16 STAU layers x 64 hidden, 3 down/upsampling
layers, gamma = 1 (residual). Data: PredNet's preprocessed arrays
(X_train.hkl + sources_train.hkl from KITTI, X_test.hkl + sources_test.hkl
from Caltech; .npy/.npz versions work too) or folders of per-clip image
folders, under config.data.data_dir.
The 16-layer model and the training protocol are configs/base.py's
`real_video_config()`; this file adds the dataset's own fields.
"""
from configs import base


def get_config():
  """Returns the KITTI -> Caltech experiment config."""
  config = base.real_video_config()
  config.name = 'kitti'
  config.model.num_downsample = 3
  data = config.data
  data.dataset = 'kitti'
  data.image_size = (128, 160)
  data.input_length = 10
  data.total_length = 11
  data.test_total_length = 20
  data.data_dir = 'data/kitti_caltech'
  data.train_path = 'X_train.hkl'  # or a folder of per-clip image folders
  data.train_sources = 'sources_train.hkl'  # '' for image folders
  data.test_path = 'X_test.hkl'  # Caltech set06-set10
  data.test_sources = 'sources_test.hkl'
  config.eval_metrics += ',lpips,fvd'  # the paper's Table 4 metrics
  return config
