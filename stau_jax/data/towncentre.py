"""TownCentreXVID: one street video, its first frames train, its last test.

Layout (config.data.video_path): one video file or one folder of frames; the
first `num_train_frames` (4,000) train, the last `num_test_frames` (3,500)
test. A video file is decoded once, on first use, into a cache folder of PNG
frames `<video_path>.frames/` next to it, or `<data_dir>/<video
name>.frames/` when that folder is not writable (tens of GB for the 1080p
TownCentreXVID.avi); later runs read the cache (`video.cached_frames`:
written into a temporary `*.frames.partial-*` folder renamed when complete,
so an interrupted extraction never leaves a partial cache; a killed process
may leave the temporary folder: delete it). Delete the cache to decode
again.
"""
import os

import numpy as np

from stau_jax.data import pipeline
from stau_jax.data import video


def validate(config):
  """Raises ValueError when config.data.video_path is unset or missing."""
  video.validate_paths(config, ('video_path',))


def load_split(config, split):
  """(Frames, windows (W, T), None) of the first ('train') or last ('test')
  frames."""
  path = video.require_path(video.resolve_path(config, 'video_path'),
                            'config.data.video_path')
  num_train = config.data.num_train_frames
  num_test = config.data.num_test_frames
  if os.path.isfile(path):
    path = video.cached_frames(path, config.data.data_dir)
  frames = video.read_image_folder(path)
  total = len(frames.paths)
  if total < max(num_train, num_test):
    raise ValueError(f'{path}: has {total} frames; config.data.'
                     f'num_train_frames={num_train} and num_test_frames='
                     f'{num_test} need at least {max(num_train, num_test)}')
  if split == 'train':
    lengths = np.array([num_train, total - num_train])
    windows = video.sliding_windows(lengths[:1], config.data.total_length, 1,
                                    path)
  else:
    first = total - num_test
    lengths = np.array([first, num_test])
    length = pipeline.eval_total_length(config)
    windows = first + video.sliding_windows(lengths[1:], length, length, path)
  return frames, windows, None


def train_batches(config, **kwargs):
  """`video.train_batches` of the first frames."""
  return video.train_batches(load_split, config, **kwargs)


def test_set(config, labelled=False):
  """`video.test_set` of the last frames."""
  return video.test_set(load_split, config, labelled)
