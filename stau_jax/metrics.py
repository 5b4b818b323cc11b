"""Video-prediction metrics following the STAU evaluation protocol.

A metric is a name mapped to a function, of one of two kinds:

* per-frame metrics, `PER_FRAME_METRICS[name](predictions, targets)`:
  (B, T, H, W, C) x 2 in [0, 1] -> (B, T), averaged over the test set frame
  by frame;
* set-level metrics, `SET_METRICS[name]`: a `features` function (B, T, H, W,
  C) -> (B, D) applied to the real and to the predicted clips, accumulated
  over the whole test set, and a `distance` between the two feature sets,
  computed once at the end.

Predictions are clipped to [0, 1] before any metric is computed; targets are
used as given.

* 'mse': sum of squared errors over a frame's H*W*C values ("MSE/frame").
* 'mae': sum of absolute errors over a frame's H*W*C values ("MAE/frame").
* 'psnr': 10 * log10(1 / mean squared error of the frame), in dB.
* 'ssim': SSIM with data_range=2.0, the number reported by the paper (the
  authors called `compare_ssim(x, gx, multichannel=True)` on [0, 1] floats,
  whose old default data_range for float input was 2.0).
* 'ssim_dr1': SSIM with data_range=1.0, the conventional value for [0, 1]
  images.
* 'lpips': LPIPS, AlexNet (stau_jax/perceptual.py); frames >= 31x31.
* 'fvd' (set-level): Frechet Video Distance between the I3D embeddings of the
  real and the predicted clips (stau_jax/perceptual.py); clips >= 9 frames,
  at least 2 clips.

`parse_metrics('mse,ssim,fvd')` checks a comma-separated list of names.
Evaluation over a dataset is a pure fold:

  sums, features = None, None
  for batch in batches:
    s = batch_sums(pred, target, valid=batch_valid_mask, names=per_frame)
    f = valid_features(batch_features(pred, target, set_level), valid)
    sums = s if sums is None else merge_sums(sums, s)
    features = f if features is None else merge_features(features, f)
  result = finalize(sums, features)
  print(format_table(result))
"""

import functools
from typing import Any, Callable, Mapping, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import perceptual

# Floor on the per-frame mean squared error inside `psnr`, so a perfect
# prediction yields 10 * log10(1e10) = 100 dB instead of +inf.
PSNR_MIN_MSE = 1e-10

_FRAME_AXES = (2, 3, 4)


def _clip(predictions: jax.Array) -> jax.Array:
  return jnp.clip(predictions, 0.0, 1.0)


@jax.jit
def mse_per_frame(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Sum of squared errors over each frame: (B, T, H, W, C) x 2 -> (B, T)."""
  diff = _clip(predictions) - targets
  return jnp.sum(jnp.square(diff), axis=_FRAME_AXES)


@jax.jit
def mae_per_frame(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Sum of absolute errors over each frame: (B, T, H, W, C) x 2 -> (B, T)."""
  diff = _clip(predictions) - targets
  return jnp.sum(jnp.abs(diff), axis=_FRAME_AXES)


@jax.jit
def psnr(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """PSNR in dB for peak value 1: (B, T, H, W, C) x 2 -> (B, T).

  The per-frame mean squared error is floored at `PSNR_MIN_MSE`, so identical
  frames give a finite 100 dB.
  """
  diff = _clip(predictions) - targets
  mse = jnp.mean(jnp.square(diff), axis=_FRAME_AXES)
  return -10.0 * jnp.log10(jnp.maximum(mse, PSNR_MIN_MSE))


def _box_mean(x: jax.Array, win_size: int) -> jax.Array:
  """Separable win_size x win_size mean over axes (H, W) with VALID padding."""
  for window in ((1, 1, win_size, 1, 1), (1, 1, 1, win_size, 1)):
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 5, 'VALID')
  return x / (win_size * win_size)


@functools.partial(jax.jit, static_argnames=('win_size',))
def ssim(
    predictions: jax.Array,
    targets: jax.Array,
    data_range: float = 2.0,
    win_size: int = 7,
) -> jax.Array:
  """Mean SSIM per frame: (B, T, H, W, C) x 2 -> (B, T).

  Equals `skimage.metrics.structural_similarity(p, t, win_size=win_size,
  data_range=data_range, channel_axis=-1)` on each (H, W, C) frame: uniform
  window, K1=0.01, K2=0.03, sample covariance (N / (N - 1) correction), and
  the mean over the region skimage keeps after cropping (win_size - 1) // 2
  pixels per border, which is exactly the set of VALID window positions; then
  the mean over channels.

  Args:
    predictions: predicted frames, clipped to [0, 1] here.
    targets: ground-truth frames.
    data_range: dynamic range L in C1 = (K1 L)^2, C2 = (K2 L)^2. The paper
      protocol used 2.0; 1.0 is the conventional value for [0, 1] images.
    win_size: odd side length of the window; H and W must be >= win_size.

  Returns:
    SSIM of shape (B, T).
  """
  x = _clip(predictions).astype(jnp.float32)
  y = targets.astype(jnp.float32)
  # Covariances are shift invariant; remove each frame's mean before forming
  # second moments to limit float32 cancellation in E[xy] - E[x]E[y].
  x_c = x - jnp.mean(x, axis=(2, 3), keepdims=True)
  y_c = y - jnp.mean(y, axis=(2, 3), keepdims=True)
  mu_x = _box_mean(x, win_size)
  mu_y = _box_mean(y, win_size)
  mu_xc = _box_mean(x_c, win_size)
  mu_yc = _box_mean(y_c, win_size)
  cov_norm = win_size * win_size / (win_size * win_size - 1.0)
  var_x = cov_norm * (_box_mean(x_c * x_c, win_size) - mu_xc * mu_xc)
  var_y = cov_norm * (_box_mean(y_c * y_c, win_size) - mu_yc * mu_yc)
  cov_xy = cov_norm * (_box_mean(x_c * y_c, win_size) - mu_xc * mu_yc)
  c1 = (0.01 * data_range) ** 2
  c2 = (0.03 * data_range) ** 2
  numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
  denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  return jnp.mean(numerator / denominator, axis=_FRAME_AXES)


class SetMetric(NamedTuple):
  """A metric of a whole test set: a distance between two feature sets.

  features: (B, T, H, W, C) clips in [0, 1] -> (B, D), jittable.
  distance: (real (N, D), predicted (N, D)) numpy arrays -> float.
  min_count: fewer clips are an error; warn_count: fewer get a warning.
  """
  features: Callable[[jax.Array], jax.Array]
  distance: Callable[[np.ndarray, np.ndarray], float]
  min_count: int
  warn_count: int


PER_FRAME_METRICS = {
    'mse': mse_per_frame,
    'mae': mae_per_frame,
    'psnr': psnr,
    'ssim': functools.partial(ssim, data_range=2.0),
    'ssim_dr1': functools.partial(ssim, data_range=1.0),
    'lpips': perceptual.lpips,
}
SET_METRICS = {
    'fvd': SetMetric(perceptual.fvd_features, perceptual.frechet_distance,
                     min_count=2, warn_count=16),
}
# The cheap set: what training evaluates unless config.eval_metrics says more.
DEFAULT_METRICS = ('mse', 'mae', 'psnr', 'ssim', 'ssim_dr1')


def parse_metrics(spec: str) -> tuple[str, ...]:
  """'mse,ssim,fvd' -> ('mse', 'ssim', 'fvd'); ValueError on unknown names."""
  names = tuple(name.strip() for name in spec.split(',') if name.strip())
  known = tuple(PER_FRAME_METRICS) + tuple(SET_METRICS)
  unknown = [name for name in names if name not in known]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f'Bad metric list {spec!r}: give distinct names, comma-'
                     f'separated, from {", ".join(known)}.')
  return names


def split_kinds(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(per-frame names, set-level names) of `names`, order kept."""
  return (tuple(n for n in names if n in PER_FRAME_METRICS),
          tuple(n for n in names if n in SET_METRICS))


@functools.partial(jax.jit, static_argnames=('names',))
def compute_metrics(
    predictions: jax.Array, targets: jax.Array,
    names: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, jax.Array]:
  """Per-frame metrics: (B, T, H, W, C) x 2 -> {name: (B, T)}.

  `names` are keys of PER_FRAME_METRICS; see the module docstring.
  """
  return {name: PER_FRAME_METRICS[name](predictions, targets)
          for name in names}


@functools.partial(jax.jit, static_argnames=('names',))
def batch_sums(
    predictions: jax.Array,
    targets: jax.Array,
    valid: jax.Array | None = None,
    names: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, jax.Array]:
  """Per-frame metric sums over the valid examples of a batch.

  Args:
    predictions: (B, T, H, W, C) predicted frames.
    targets: (B, T, H, W, C) ground-truth frames.
    valid: optional (B,) boolean mask; False marks padded examples, which
      contribute nothing (not even NaNs). Defaults to all True.
    names: per-frame metrics to compute.

  Returns:
    {name: (T,) sum over valid examples} for each of `names`, plus 'count':
    scalar float32 number of valid examples.
  """
  metrics = compute_metrics(predictions, targets, names)
  if valid is None:
    valid = jnp.ones(predictions.shape[:1], dtype=bool)
  mask = valid.astype(bool)[:, None]
  sums = {
      name: jnp.sum(jnp.where(mask, value, 0.0), axis=0)
      for name, value in metrics.items()
  }
  sums['count'] = jnp.sum(valid.astype(jnp.float32))
  return sums


@functools.partial(jax.jit, static_argnames=('names',))
def batch_features(
    predictions: jax.Array, targets: jax.Array, names: tuple[str, ...]
) -> dict[str, dict[str, jax.Array]]:
  """Set-level metric features: {name: {'real': (B, D), 'predicted': (B, D)}}.

  Real and predicted clips go through one call (one compiled network).
  """
  clips = jnp.concatenate([targets, predictions.astype(targets.dtype)])
  features = {name: SET_METRICS[name].features(clips) for name in names}
  return {name: {'real': value[:len(targets)],
                 'predicted': value[len(targets):]}
          for name, value in features.items()}


def valid_features(features, valid) -> dict[str, dict[str, np.ndarray]]:
  """`batch_features` output as numpy, keeping the rows where valid (B,)."""
  valid = np.asarray(valid, bool)
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[valid], features)


def merge_features(a, b) -> dict[str, dict[str, np.ndarray]]:
  """Concatenates two `valid_features` results along the example axis."""
  return jax.tree_util.tree_map(lambda x, y: np.concatenate([x, y]), a, b)


def merge_sums(
    a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
  """Adds two `batch_sums` results key by key."""
  return {name: a[name] + b[name] for name in a}


def finalize(sums: Mapping[str, Any],
             features: Mapping[str, Any] | None = None
             ) -> dict[str, dict[str, Any]]:
  """Turns accumulated sums (and set-level features) into the result.

  Args:
    sums: output of `batch_sums` / `merge_sums`.
    features: optional output of `valid_features` / `merge_features` over the
      whole test set.

  Returns:
    {'per_frame': {name: list of T floats}, 'mean': {name: float},
     'count': int}. A per-frame metric's mean is the mean of its per-frame
    means (every frame has the same count, so it is also the mean over all
    frames); a set-level metric appears only under 'mean'.

  Raises:
    ValueError: if no valid example was accumulated, or fewer than a
      set-level metric's min_count.
  """
  count = float(np.asarray(sums['count']))
  if count <= 0:
    raise ValueError('finalize() needs at least one valid example.')
  per_frame = {  # In registry order (jit returns dicts with sorted keys).
      name: (np.asarray(sums[name], dtype=np.float64) / count).tolist()
      for name in PER_FRAME_METRICS if name in sums
  }
  mean = {name: float(np.mean(values)) for name, values in per_frame.items()}
  for name, sets in (features or {}).items():
    metric, clips = SET_METRICS[name], len(sets['real'])
    if clips < metric.min_count:
      raise ValueError(f'{name} needs at least {metric.min_count} test clips; '
                       f'got {clips}. Evaluate more sequences.')
    if clips < metric.warn_count:
      logging.warning('%s over only %d clips is a noisy estimate; use at '
                      'least %d.', name, clips, metric.warn_count)
    mean[name] = metric.distance(sets['real'], sets['predicted'])
  return {'per_frame': per_frame, 'mean': mean, 'count': int(round(count))}


def format_table(result: Mapping[str, Any]) -> str:
  """`finalize` output as a per-frame table, an averages row, then one line
  per set-level metric."""
  names = list(result['per_frame'])
  header = f"{'frame':>6}" + ''.join(f'{name:>12}' for name in names)
  num_frames = len(result['per_frame'][names[0]])
  lines = [header, '-' * len(header)]
  for t in range(num_frames):
    row = ''.join(f"{result['per_frame'][name][t]:12.4f}" for name in names)
    lines.append(f'{t + 1:>6}' + row)
  lines.append('-' * len(header))
  row = ''.join(f"{result['mean'][name]:12.4f}" for name in names)
  lines.append(f"{'mean':>6}" + row)
  lines.extend(f"{name} over {result['count']} clips: {value:.4f}"
               for name, value in result['mean'].items() if name not in names)
  return '\n'.join(lines)
