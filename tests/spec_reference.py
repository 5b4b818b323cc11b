"""STAU written straight from docs/model.md, as plain Python loops.

An independent reference for the tests: no flax modules, no scans, no ring
buffers; Python lists that grow and are sliced exactly as docs/model.md describes,
and a softmax over a variable number of lower layers. It reads the parameter
tree of `stau_jax.models.Predictor` (cell parameters stacked over layers).
"""
import math

import jax
import jax.numpy as jnp
from jax import lax


def conv(x, params, stride=1, padding='SAME'):
  """NHWC conv with an HWIO kernel and bias."""
  y = lax.conv_general_dilated(x, params['kernel'], (stride, stride), padding,
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               precision=lax.Precision.HIGHEST)
  return y + params['bias']


def transposed_conv(x, params):
  """PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1).

  Written as the gradient of a stride-2 conv: dilate the input by 2, pad
  (1, 2) and correlate with the spatially flipped kernel. The stored kernel
  is (kh, kw, out, in), the forward conv's HWIO, so in/out are swapped.
  """
  kernel = jnp.flip(params['kernel'], (0, 1)).swapaxes(2, 3)
  y = lax.conv_general_dilated(x, kernel, (1, 1), ((1, 2), (1, 2)),
                               lhs_dilation=(2, 2),
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               precision=lax.Precision.HIGHEST)
  return y + params['bias']


def layer_norm(x, params):
  """LayerNorm over (h, w, C) of each sample, elementwise affine, eps 1e-5."""
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  var = ((x - mean)**2).mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-5) * params['scale'] + params['bias']


def conv_norm(x, params):
  return layer_norm(conv(x, params['conv']), params['norm'])


def softmax_weights(keys, query):
  """One weight per entry: softmax_j(sum(keys[j] * query) / sqrt(d)), (N, B)."""
  d = math.prod(query.shape[1:])
  scores = jnp.stack([(k * query).sum(axis=(1, 2, 3)) for k in keys])
  return jax.nn.softmax(scores / math.sqrt(d), axis=0)


def weighted(weights, values):
  return sum(w[:, None, None, None] * v for w, v in zip(weights, values))


def cell(params, temporal, spatial, t_att, s_att, t_spatial, s_spatial,
         variant='stau', residual=False):
  """The cell equations of docs/model.md; the stacks are Python lists."""
  s_query = conv_norm(spatial, params['conv_s_next'])
  t_query = conv_norm(temporal, params['conv_t_next'])
  if variant == 'stau_no_tam':
    t_ami = temporal
  else:
    if variant in ('stau_s_not_t', 'stau_independent'):
      alpha = softmax_weights(t_att, t_query)
    else:
      alpha = softmax_weights(s_att, s_query)
    f_t = jax.nn.sigmoid(t_query)
    t_ami = f_t * temporal + (1 - f_t) * weighted(alpha, t_att)
  if variant == 'mau':
    s_aai = spatial
  else:
    if variant in ('stau_t_not_s', 'stau_independent'):
      beta = softmax_weights(s_spatial, s_query)
    else:
      beta = softmax_weights(t_spatial, t_query)
    f_s = jax.nn.sigmoid(s_query)
    s_aai = f_s * spatial + (1 - f_s) * weighted(beta, s_spatial)
  t_g, t_t, t_s = jnp.split(conv_norm(t_ami, params['conv_t']), 3, axis=-1)
  s_g, s_t, s_s = jnp.split(conv_norm(s_aai, params['conv_s']), 3, axis=-1)
  u_t, u_s = jax.nn.sigmoid(t_g), jax.nn.sigmoid(s_g)
  new_temporal = u_t * t_t + (1 - u_t) * s_t
  new_spatial = u_s * s_s + (1 - u_s) * t_s
  if residual:
    new_spatial = new_spatial + spatial
  return new_temporal, new_spatial


def predict(params, frames, true_frame_mask, *, num_layers, tau, theta,
            num_downsample, input_length, variant='stau', residual=False,
            recall=False):
  """The whole model for patch_size 1: frames (B, T, H, W, c) -> (B, T-1, H, W, c).

  `true_frame_mask` is (B, T - input_length - 1, H, W, c).
  """
  params = params['unroll']
  layer_params = [jax.tree_util.tree_map(lambda p, k=k: p[k],
                                         params['cells']['cell'])
                  for k in range(num_layers)]
  length = frames.shape[1]
  temporal_history, spatial_history, temporal = [], [], []
  predictions, prediction = [], None
  for t in range(length - 1):
    if t < input_length:
      frame = frames[:, t]
    else:
      m = true_frame_mask[:, t - input_length]
      frame = m * frames[:, t] + (1 - m) * prediction
    x = jax.nn.leaky_relu(conv(frame, params['encoder']['embed']), 0.2)
    encoded = [x]
    for i in range(num_downsample):
      x = jax.nn.leaky_relu(conv(x, params['encoder'][f'down_{i}'], 2,
                                 ((1, 1), (1, 1))), 0.2)
      encoded.append(x)
    if t == 0:
      zeros = jnp.zeros_like(x)  # (B, h, w, C): the encoder emits C channels.
      temporal = [zeros] * num_layers
      temporal_history = [[zeros] * tau for _ in range(num_layers)]
      spatial_history = [[zeros] * tau for _ in range(num_layers)]
    spatial = x
    lower_spatial, lower_temporal = [], []
    for k in range(num_layers):
      lower_spatial.append(spatial)
      lower_temporal.append(temporal[k])
      t_att = temporal_history[k][-tau:]
      s_att = spatial_history[k][-tau:]
      spatial_history[k].append(spatial)
      temporal[k], spatial = cell(
          layer_params[k], temporal[k], spatial, t_att, s_att,
          lower_temporal[-theta:], lower_spatial[-theta:], variant, residual)
      temporal_history[k].append(temporal[k])
    out = spatial
    for i in range(num_downsample):
      out = transposed_conv(out, params['decoder'][f'up_{i}'])
      if i < num_downsample - 1:
        out = jax.nn.leaky_relu(out, 0.2)
      if recall:
        out = out + encoded[num_downsample - 1 - i]
    prediction = conv(out, params['decoder']['readout'])
    predictions.append(prediction)
  return jnp.stack(predictions, axis=1)
