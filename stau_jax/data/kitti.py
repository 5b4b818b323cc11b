"""KITTI (train) / Caltech Pedestrian (test), the paper's real-video pair.

Layout: PredNet's preprocessed arrays, frames (N, H, W, C) uint8 in
.npy/.npz/.hkl (config.data.train_path, e.g. X_train.hkl) plus a sources
list (train_sources, e.g. sources_train.hkl, N strings) naming each frame's
clip; the same for test_path / test_sources; or a folder of per-clip image
folders. Windows never cross a clip boundary; training takes every window
(stride 1), testing consecutive disjoint ones.
"""
from stau_jax.data import pipeline
from stau_jax.data import video


def validate(config):
  """Raises ValueError when an input path is unset or missing."""
  video.validate_paths(config, ('train_path', 'test_path'),
                       ('train_sources', 'test_sources'))


def load_split(config, split):
  """(Frames, windows (W, T), None) of KITTI ('train') or Caltech ('test')."""
  path = video.require_path(video.resolve_path(config, f'{split}_path'),
                            f'config.data.{split}_path')
  sources = video.resolve_path(config, f'{split}_sources')
  if sources:
    video.require_path(sources, f'config.data.{split}_sources')
  frames = video.read_frames(path, sources)
  if split == 'train':
    windows = video.sliding_windows(frames.clip_lengths,
                                    config.data.total_length, 1, path)
  else:
    length = pipeline.eval_total_length(config)
    windows = video.sliding_windows(frames.clip_lengths, length, length, path)
  return frames, windows, None


def train_batches(config, **kwargs):
  """`video.train_batches` of the KITTI frames."""
  return video.train_batches(load_split, config, **kwargs)


def test_set(config, labelled=False):
  """`video.test_set` of the Caltech frames."""
  return video.test_set(load_split, config, labelled)
