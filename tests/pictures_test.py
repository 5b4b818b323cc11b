"""Tests of the frame strips, GIFs and metric curves."""
import errno
import os

import numpy as np
import pytest
from PIL import Image

from stau_jax import outputs
from stau_jax import pictures


def _sequence(length=6, size=8, channels=1, seed=0):
  return np.random.default_rng(seed).random((length, size, size, channels),
                                            dtype=np.float32)


def test_strip_puts_predictions_under_the_frames_they_predict():
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  strip = pictures.sequence_strip(frames, predictions, input_length=4)
  assert strip.shape == (2 * 8 + 2, 6 * 10 - 2, 1) and strip.dtype == np.uint8
  np.testing.assert_array_equal(strip[:8, 10:18],
                                pictures.to_uint8(frames[1]))
  np.testing.assert_array_equal(strip[10:, 40:48],
                                pictures.to_uint8(predictions[0]))
  assert (strip[10:, :38] == 255).all()  # no prediction under the inputs


def test_strip_rejects_mismatched_predictions():
  with pytest.raises(ValueError, match='future frames'):
    pictures.sequence_strip(_sequence(), _sequence(length=3), input_length=4)


def test_samples_strip_and_png(tmp_path):
  frames = np.stack([_sequence(channels=3, seed=i) for i in range(3)])
  predictions = frames[:, 4:]
  image = pictures.samples_strip(frames, predictions, input_length=4)
  assert image.shape == (3 * 18 + 2 * 4, 58, 3)
  pictures.save_png(str(tmp_path / 'strip.png'), image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'strip.png')),
                                image)


def test_gif_shows_truth_and_inputs_then_predictions(tmp_path):
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  path = str(tmp_path / 'sub' / 'sequence.gif')
  pictures.save_gif(path, frames, predictions, input_length=4)
  gif = Image.open(path)
  assert gif.n_frames == 6 and gif.size == (18, 8)
  gif.seek(5)
  last = np.asarray(gif.convert('L'))
  np.testing.assert_array_equal(last[:, 10:],
                                pictures.to_uint8(predictions[1])[..., 0])
  np.testing.assert_array_equal(last[:, :8],
                                pictures.to_uint8(frames[5])[..., 0])


def test_frame_strip_rows_are_inputs_truth_prediction_and_error():
  inputs, truth = _sequence(length=4), _sequence(length=3, seed=1)
  prediction = _sequence(length=3, seed=2)
  strip = pictures.frame_strip(inputs, truth, prediction)
  assert strip.shape == (4 * 10 - 2, 4 * 10 - 2, 1) and strip.dtype == np.uint8
  rows = [inputs, truth, prediction, np.abs(truth - prediction)]
  for r, row in enumerate(rows):
    for t, frame in enumerate(row):
      np.testing.assert_array_equal(
          strip[r * 10:r * 10 + 8, t * 10:t * 10 + 8],
          pictures.to_uint8(frame), err_msg=f'row {r}, frame {t}')
  assert (strip[10:, 30:] == 255).all()  # 3 future frames: the 4th is empty
  labeled = pictures.frame_strip(inputs, truth, prediction, labels=True)
  assert labeled.shape[0] == strip.shape[0]
  np.testing.assert_array_equal(labeled[:, -strip.shape[1]:], strip)
  assert (labeled[:, :-strip.shape[1]] < 128).any()  # the row names


def test_frame_strip_scales_frames():
  inputs, truth = _sequence(length=2, channels=3), _sequence(length=2, seed=1,
                                                            channels=3)
  strip = pictures.frame_strip(inputs, truth, truth, scale=3)
  assert strip.shape == (4 * 26 - 2, 2 * 26 - 2, 3)
  np.testing.assert_array_equal(strip[26:50:3, 26:50:3],
                                pictures.to_uint8(truth[1]))
  assert (strip[78:, :24] == 0).all()  # no error where prediction == truth


def test_gif_frame_count_and_scale(tmp_path):
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  path = str(tmp_path / 'animation.gif')
  pictures.save_gif(path, frames, predictions, input_length=4, scale=2)
  gif = Image.open(path)
  assert gif.n_frames == 6 and gif.size == (2 * 16 + 2, 16)


def test_metric_curves_is_an_rgb_image():
  per_frame = {'mse': [1.0, 2.0, 3.0], 'psnr': [30.0, 20.0, 10.0]}
  image = pictures.metric_curves(per_frame, first_frame=5, title='test')
  assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  assert image.shape[1] > image.shape[0] > 100
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # not blank


def test_pictures_on_a_full_disk_keep_the_old_files(tmp_path, monkeypatch):
  def full_disk(path):
    raise OSError(errno.ENOSPC, 'No space left on device', path)

  monkeypatch.setattr(outputs, '_fsync', full_disk)
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  for name, save in [
      ('strip.png', lambda path: pictures.save_png(
          path, pictures.to_uint8(frames[0]))),
      ('sequence.gif', lambda path: pictures.save_gif(path, frames,
                                                      predictions, 4))]:
    (tmp_path / name).write_bytes(b'old')
    with pytest.raises(outputs.OutputError, match=f'disk is full.*{name}'):
      save(str(tmp_path / name))
    assert (tmp_path / name).read_bytes() == b'old'
  assert sorted(os.listdir(tmp_path)) == ['sequence.gif', 'strip.png']
