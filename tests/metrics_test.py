"""Tests for stau_jax.metrics."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from stau_jax import metrics

_SHAPES = ((64, 64, 1), (64, 64, 3), (16, 24, 1), (16, 24, 3))


def _random_pair(rng, shape):
  return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


def _structured_pair(rng, shape):
  """Smooth pattern + flat bright band; prediction is a noisy copy."""
  b, t, h, w, c = shape
  yy, xx = np.mgrid[:h, :w]
  base = 0.5 + 0.5 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
  base[h // 4:h // 2] = 0.9
  target = np.broadcast_to(base[..., None], shape).astype(np.float32)
  target = target * np.linspace(0.6, 1.0, c, dtype=np.float32)
  noise = 0.05 * rng.standard_normal(shape).astype(np.float32)
  return np.clip(target + noise, 0.0, 1.0), target


def _flat_pair(rng, shape):
  """Nearly constant bright frames: stresses float32 cancellation."""
  target = np.full(shape, 0.8, np.float32)
  target[:, :, ::5] = 0.81
  noise = 1e-3 * rng.standard_normal(shape).astype(np.float32)
  return np.clip(target + noise, 0.0, 1.0), target


def _skimage_ssim(pred, target, data_range):
  b, t = pred.shape[:2]
  return np.array([[
      structural_similarity(
          pred[i, j].astype(np.float64), target[i, j].astype(np.float64),
          win_size=7, data_range=data_range, channel_axis=-1)
      for j in range(t)] for i in range(b)])


@pytest.mark.parametrize('hwc', _SHAPES)
@pytest.mark.parametrize('make_pair',
                         (_random_pair, _structured_pair, _flat_pair))
@pytest.mark.parametrize('data_range', (1.0, 2.0))
def test_ssim_matches_skimage(hwc, make_pair, data_range):
  rng = np.random.default_rng(0)
  pred, target = make_pair(rng, (2, 3) + hwc)
  got = np.asarray(metrics.ssim(pred, target, data_range=data_range))
  assert got.shape == (2, 3)
  np.testing.assert_allclose(
      got, _skimage_ssim(pred, target, data_range), rtol=0, atol=1e-5)


def test_ssim_valid_region_equals_skimage_crop():
  """VALID windows cover exactly skimage's cropped region of the full map."""
  rng = np.random.default_rng(1)
  pred, target = _structured_pair(rng, (1, 1, 16, 24, 1))
  x, y = pred[0, 0, ..., 0].astype(np.float64), target[0, 0, ..., 0]
  _, full = structural_similarity(
      x, y.astype(np.float64), win_size=7, data_range=1.0, full=True)
  # skimage crops (win_size - 1) // 2 = 3 pixels from every border.
  cropped = full[3:-3, 3:-3]
  assert cropped.shape == (16 - 6, 24 - 6)
  np.testing.assert_allclose(
      float(metrics.ssim(pred, target, data_range=1.0)[0, 0]),
      cropped.mean(), atol=1e-5)
  # The VALID box mean is the reflect-padded uniform filter on that region.
  box = np.asarray(metrics._box_mean(pred.astype(np.float32), 7))[0, 0, ..., 0]
  np.testing.assert_allclose(
      box, ndimage.uniform_filter(x, size=7)[3:-3, 3:-3], atol=1e-6)


def test_mse_mae_psnr_match_numpy():
  rng = np.random.default_rng(2)
  pred, target = _random_pair(rng, (2, 4, 16, 24, 3))
  pred = pred * 1.4 - 0.2  # Some values outside [0, 1].
  clipped = np.clip(pred, 0.0, 1.0).astype(np.float64)
  err = clipped - target
  np.testing.assert_allclose(
      metrics.mse_per_frame(pred, target),
      (err ** 2).sum(axis=(2, 3, 4)), rtol=1e-5)
  np.testing.assert_allclose(
      metrics.mae_per_frame(pred, target),
      np.abs(err).sum(axis=(2, 3, 4)), rtol=1e-5)
  np.testing.assert_allclose(
      metrics.psnr(pred, target),
      10.0 * np.log10(1.0 / (err ** 2).mean(axis=(2, 3, 4))), atol=1e-4)


def test_predictions_are_clipped_targets_are_not():
  target = np.full((1, 1, 8, 8, 1), 1.0, np.float32)
  over = np.full_like(target, 1.5)
  out = metrics.compute_metrics(over, target)
  assert float(out['mse'][0, 0]) == 0.0
  assert float(out['mae'][0, 0]) == 0.0
  under = np.full_like(target, -0.5)
  zeros = np.zeros_like(target)
  assert float(metrics.mse_per_frame(under, zeros)[0, 0]) == 0.0
  # An out-of-range target is used as is: |1.0 - 1.5| over 64 pixels.
  np.testing.assert_allclose(
      metrics.mae_per_frame(over, over)[0, 0], 0.5 * 64, rtol=1e-6)


def test_identical_inputs():
  rng = np.random.default_rng(3)
  x, _ = _structured_pair(rng, (2, 3, 16, 24, 3))
  out = metrics.compute_metrics(x, x)
  assert set(out) == set(metrics.DEFAULT_METRICS)
  for value in out.values():
    assert value.shape == (2, 3)
  np.testing.assert_array_equal(out['mse'], 0.0)
  np.testing.assert_array_equal(out['mae'], 0.0)
  np.testing.assert_allclose(out['ssim'], 1.0, atol=1e-6)
  np.testing.assert_allclose(out['ssim_dr1'], 1.0, atol=1e-6)
  # mse is floored at PSNR_MIN_MSE = 1e-10, so PSNR is a finite 100 dB.
  np.testing.assert_allclose(out['psnr'], 100.0, rtol=1e-6)


def test_accumulator_excludes_padded_examples():
  rng = np.random.default_rng(4)
  pred, target = _random_pair(rng, (5, 3, 16, 16, 1))
  # Pad the last two examples with garbage (including NaNs) and mask them.
  pred[3:] = np.nan
  valid = np.array([True, True, True, False, False])
  first = metrics.batch_sums(pred[:2], target[:2])
  second = metrics.batch_sums(pred[2:], target[2:], valid=valid[2:])
  assert float(second['count']) == 1.0
  result = metrics.finalize(metrics.merge_sums(first, second))
  assert result['count'] == 3

  expected = metrics.compute_metrics(pred[:3], target[:3])
  for name in metrics.DEFAULT_METRICS:
    per_frame = np.asarray(expected[name]).mean(axis=0)
    assert len(result['per_frame'][name]) == 3
    np.testing.assert_allclose(result['per_frame'][name], per_frame,
                               rtol=1e-5)
    np.testing.assert_allclose(result['mean'][name], per_frame.mean(),
                               rtol=1e-5)


def test_finalize_rejects_empty():
  pred, target = _random_pair(np.random.default_rng(5), (2, 1, 8, 8, 1))
  sums = metrics.batch_sums(pred, target, valid=np.zeros(2, bool))
  with pytest.raises(ValueError):
    metrics.finalize(sums)


def test_format_table():
  result = {
      'per_frame': {'mse': [1.0, 3.0], 'ssim': [0.9, 0.7]},
      'mean': {'mse': 2.0, 'ssim': 0.8},
      'count': 4,
  }
  lines = metrics.format_table(result).splitlines()
  assert lines[0].split() == ['frame', 'mse', 'ssim']
  assert lines[2].split() == ['1', '1.0000', '0.9000']
  assert lines[3].split() == ['2', '3.0000', '0.7000']
  assert lines[-1].split() == ['mean', '2.0000', '0.8000']


def test_format_table_from_finalize():
  rng = np.random.default_rng(6)
  pred, target = _random_pair(rng, (2, 4, 8, 8, 1))
  table = metrics.format_table(
      metrics.finalize(metrics.batch_sums(pred, target)))
  lines = table.splitlines()
  assert lines[0].split() == ['frame'] + list(metrics.DEFAULT_METRICS)
  assert [line.split()[0] for line in lines[2:6]] == ['1', '2', '3', '4']
  assert lines[-1].startswith('  mean')


def test_parse_metrics():
  assert metrics.parse_metrics(' mse, lpips,fvd ') == ('mse', 'lpips', 'fvd')
  assert metrics.split_kinds(('fvd', 'mse', 'lpips')) == (('mse', 'lpips'),
                                                          ('fvd',))
  for bad in ('mse,fid', '', 'mse,mse'):
    with pytest.raises(ValueError, match='Bad metric list'):
      metrics.parse_metrics(bad)


def test_set_level_metric_over_accumulated_features(monkeypatch, caplog):
  """Features of valid rows are gathered over batches; the distance runs once."""
  calls = []

  def distance(real, predicted):
    calls.append((real, predicted))
    return float(np.sum(predicted - real))

  monkeypatch.setitem(metrics.SET_METRICS, 'fvd', metrics.SetMetric(
      lambda clips: clips[:, :, 0, 0, 0], distance, min_count=2,
      warn_count=16))
  rng = np.random.default_rng(7)
  pred, target = _random_pair(rng, (6, 2, 4, 4, 1))
  valid = np.array([True, True, True, True, False, False])
  sums, features = None, None
  for rows in (slice(0, 3), slice(3, 6)):
    s = metrics.batch_sums(pred[rows], target[rows], valid[rows], ('mse',))
    f = metrics.valid_features(
        metrics.batch_features(pred[rows], target[rows], ('fvd',)),
        valid[rows])
    sums = s if sums is None else metrics.merge_sums(sums, s)
    features = f if features is None else metrics.merge_features(features, f)
  result = metrics.finalize(sums, features)
  assert 'fvd over only 4 clips is a noisy estimate' in caplog.text
  assert len(calls) == 1
  np.testing.assert_array_equal(calls[0][0], target[:4, :, 0, 0, 0])
  np.testing.assert_array_equal(calls[0][1], pred[:4, :, 0, 0, 0])
  assert list(result['per_frame']) == ['mse']
  assert result['mean']['fvd'] == pytest.approx(
      np.sum(pred[:4, :, 0, 0, 0] - target[:4, :, 0, 0, 0]), rel=1e-6)
  assert metrics.format_table(result).splitlines()[-1].startswith(
      'fvd over 4 clips: ')
  with pytest.raises(ValueError, match='at least 2 test clips'):
    metrics.finalize(sums, metrics.valid_features(features, [1, 0, 0, 0]))
