"""Tests for the video_folder dataset on tiny videos written with PyAV."""
import os

import numpy as np
from PIL import Image
import pytest

from configs import video_folder as video_folder_config
from stau_jax import data as data_lib
from stau_jax.data import video_folder
from tests.videos import video_frames
from tests.videos import write_video

pytest.importorskip('tensorflow')


def _frame_index(frames):
  """Frame numbers of `video_frames` frames (channel 0 = 20 i + 10)."""
  return np.rint((frames[..., 0].mean(axis=(-1, -2)) * 255 - 10) / 20)


def _frame_folder(path, frames):
  os.makedirs(path)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(path, f'{i:04d}.png'))


def _config(root, **data):
  config = video_folder_config.get_config()
  config.data.update(dict(data_dir=str(root), image_size=(16, 16),
                          input_length=2, total_length=4), **data)
  config.model.num_downsample = 1
  config.batch_size = 2
  config.eval_batch_size = 2
  return config


def _folder(root):
  """Two videos and a frame folder of 12 frames (16x16); c/ tests."""
  frames = video_frames(12, 16, 16)
  write_video(root / 'a.mp4', frames, 'mpeg4')
  write_video(root / 'b.avi', frames, 'mpeg4')
  _frame_folder(root / 'c', frames)
  (root / 'test.txt').write_text('c\n')
  return frames


@pytest.mark.parametrize('channels', [3, 1])
def test_videos_and_frame_folders_train_and_test_with_strides(tmp_path,
                                                              channels):
  _folder(tmp_path)
  config = _config(tmp_path, frame_stride=2, clip_stride=1, channels=channels)
  data_lib.validate_data_config(config, num_devices=1)
  batch = next(data_lib.create_train_iterator(config, num_devices=1))[0]
  assert batch.shape == (2, 4, 16, 16, channels)
  assert batch.min() >= 0 and batch.max() <= 1
  if channels == 3:
    for sequence in _frame_index(batch):  # every 2nd frame of one clip
      np.testing.assert_array_equal(np.diff(sequence), [2, 2, 2])
  test_set = data_lib.load_test_set(config)
  # c/ at stride 2 has 6 frames: one disjoint sequence of 4.
  assert test_set.size == 1 and test_set.source == str(tmp_path)
  (test,) = list(test_set.batches(2))
  assert test['valid'].tolist() == [True, False]
  if channels == 3:
    np.testing.assert_array_equal(_frame_index(test['frames'][0]),
                                  [0, 2, 4, 6])
  assert sorted(os.listdir(tmp_path)) == [
      'a.mp4', 'a.mp4.frames', 'b.avi', 'b.avi.frames', 'c', 'test.txt']
  assert video_folder.list_clips(str(tmp_path)) == ['a.mp4', 'b.avi', 'c']


def test_split_by_name_is_deterministic_and_a_list_file_wins(tmp_path):
  names = [f'clip{i}' for i in range(10)]
  for name in reversed(names):
    _frame_folder(tmp_path / name, video_frames(1, 4, 4))
  split = video_folder.split_clips(str(tmp_path), 0.2)
  assert len(split['test']) == 2 and sorted(
      split['train'] + split['test']) == names
  assert video_folder.split_clips(str(tmp_path), 0.2) == split
  (tmp_path / 'test.txt').write_text('clip3\nclip7\n')
  (tmp_path / 'train.txt').write_text('clip1\n')
  assert video_folder.split_clips(str(tmp_path), 0.2) == {
      'train': ['clip1'], 'test': ['clip3', 'clip7']}
  (tmp_path / 'test.txt').write_text('clip3\nnot_there.mp4\n')
  with pytest.raises(ValueError, match=r"test.txt: lists \['not_there.mp4'\]"):
    video_folder.split_clips(str(tmp_path), 0.2)


def test_bad_clips_are_named_together_or_skipped(tmp_path, caplog):
  _folder(tmp_path)
  (tmp_path / 'broken.mp4').write_bytes(b'not a video')
  _frame_folder(tmp_path / 'short', video_frames(2, 16, 16))
  config = _config(tmp_path)
  with pytest.raises(ValueError, match=r'2 train clip\(s\) cannot be used: '
                     r'broken.mp4 \(.*could not decode.*\); short \(2 frames '
                     r'at frame_stride 1, fewer than the 4 a sequence needs\).*'
                     r'skip_bad_files=True'):
    data_lib.create_train_iterator(config, num_devices=1)
  config.data.skip_bad_files = True
  batch = next(data_lib.create_train_iterator(config, num_devices=1))
  assert batch.shape == (1, 2, 4, 16, 16, 3)
  assert 'skipping 2 train clip(s): broken.mp4' in caplog.text


@pytest.mark.parametrize('setup, match', [
    (lambda root: None, r'no video files \(.avi, .mp4'),
    (lambda root: _frame_folder(root / 'only', video_frames(4, 4, 4)),
     r'has one clip \(only\); a train/test split needs two, or a test.txt'),
])
def test_a_folder_without_a_split_is_named_at_validation(tmp_path, setup,
                                                         match):
  setup(tmp_path)
  with pytest.raises(ValueError, match=match):
    data_lib.validate_data_config(_config(tmp_path), num_devices=1)


def test_a_missing_folder_is_named(tmp_path):
  with pytest.raises(ValueError, match=r'config.data.data_dir: .*nowhere does '
                     'not exist'):
    data_lib.validate_data_config(_config(tmp_path / 'nowhere'), num_devices=1)
