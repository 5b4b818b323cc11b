"""Tests for stau_jax.models.frontends: the decoder against its layers
written out plainly (transposed convs through lax, the readout a matmul)."""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from stau_jax import models
from stau_jax.models import frontends
from tests import perturb

HIDDEN, FRAME_CHANNELS = 4, 3


def _transposed(x, kernel, bias):
  """PyTorch's ConvTranspose2d(3, stride 2, padding 1, output_padding 1):
  flax kernel (3, 3, out, in), as lax's input-dilated conv with the kernel
  flipped."""
  flipped = jnp.flip(kernel, (0, 1))
  return lax.conv_general_dilated(
      x, flipped, (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2),
      dimension_numbers=('NHWC', 'HWOI', 'NHWC'),
      precision=lax.Precision.HIGHEST) + bias


def _plain_decoder(params, top, encoded, num_downsample, recall):
  x = top
  for i in range(num_downsample):
    up = params[f'up_{i}']
    x = _transposed(x, up['kernel'], up['bias'])
    if i < num_downsample - 1:
      x = jnp.where(x > 0, x, 0.2 * x)
    if recall:
      x = x + encoded[num_downsample - 1 - i]
  readout = params['readout']
  return x @ readout['kernel'][0, 0] + readout['bias']


def _decoder(num_downsample, recall, conv_impl='auto'):
  conv = models.conv_factory(conv_impl=conv_impl)
  conv_transpose = functools.partial(frontends.ConvTranspose,
                                     conv_impl=conv_impl)
  return frontends.Decoder(HIDDEN, num_downsample, FRAME_CHANNELS, recall,
                           conv, conv_transpose)


def _inputs(num_downsample, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), num_downsample + 1)
  size = 4
  top = jax.random.normal(keys[0], (2, size, size, HIDDEN))
  encoded = [jax.random.normal(keys[i + 1],
                               (2, size * 2 ** (num_downsample - i),
                                size * 2 ** (num_downsample - i), HIDDEN))
             for i in range(num_downsample)]
  return top, encoded + [top]


@pytest.mark.parametrize('num_downsample', [0, 1, 2])
@pytest.mark.parametrize('recall', [False, True])
@pytest.mark.parametrize('conv_impl', ['xla', 'auto'])
def test_decoder_is_its_layers_one_after_another(num_downsample, recall,
                                                 conv_impl):
  """The readout composed into the last transposed conv changes nothing:
  the parameters are those of the layers applied one after another."""
  decoder = _decoder(num_downsample, recall, conv_impl)
  top, encoded = _inputs(num_downsample)
  params = decoder.init(jax.random.PRNGKey(1), top, encoded)['params']
  expected_names = {f'up_{i}' for i in range(num_downsample)} | {'readout'}
  assert set(params) == expected_names
  assert params['readout']['kernel'].shape == (1, 1, HIDDEN, FRAME_CHANNELS)
  params = perturb.perturb(params, 0.3, 2)

  def loss(apply, params):
    return jnp.sum(jnp.sin(apply(params)))

  ours = lambda p: decoder.apply({'params': p}, top, encoded)  # noqa: E731
  plain = lambda p: _plain_decoder(p, top, encoded,  # noqa: E731
                                   num_downsample, recall)
  np.testing.assert_allclose(ours(params), plain(params), rtol=1e-5,
                             atol=1e-5)
  got = jax.grad(functools.partial(loss, ours))(params)
  want = jax.grad(functools.partial(loss, plain))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_full_resolution_convolution_computes_frame_channels_only():
  """The last transposed conv gives frame_channels outputs, not HIDDEN."""
  decoder = _decoder(2, False, 'xla')
  top, encoded = _inputs(2)
  params = decoder.init(jax.random.PRNGKey(1), top, encoded)['params']
  jaxpr = jax.make_jaxpr(
      lambda p: decoder.apply({'params': p}, top, encoded))(params)
  conv_outputs = [eqn.outvars[0].aval.shape for eqn in jaxpr.jaxpr.eqns
                  if eqn.primitive.name == 'conv_general_dilated']
  assert conv_outputs == [(2, 8, 8, HIDDEN), (2, 16, 16, FRAME_CHANNELS)], (
      conv_outputs)


def _plain_encoder(params, frame, num_downsample):
  leaky = lambda x: jnp.where(x > 0, x, 0.2 * x)  # noqa: E731
  x = leaky(frame @ params['embed']['kernel'][0, 0] + params['embed']['bias'])
  features = [x]
  for i in range(num_downsample):
    down = params[f'down_{i}']
    x = leaky(lax.conv_general_dilated(
        x, down['kernel'], (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=lax.Precision.HIGHEST) + down['bias'])
    features.append(x)
  return features


@pytest.mark.parametrize('num_downsample', [0, 1, 2])
@pytest.mark.parametrize('recompute', [False, True])
def test_encoder_is_its_layers_and_recomputes_full_resolution(num_downsample,
                                                              recompute):
  """The encoder against its layers written out plainly, values and
  gradients; with `recompute_full_resolution` (and a stride-2 conv) the
  backward pass keeps no (B, H, W, C) array."""
  encoder = frontends.Encoder(HIDDEN, num_downsample, models.conv_factory(),
                              recompute_full_resolution=recompute)
  frame = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 1))
  params = encoder.init(jax.random.PRNGKey(1), frame)['params']
  assert set(params) == {'embed'} | {f'down_{i}' for i in range(num_downsample)}
  params = perturb.perturb(params, 0.3, 2)

  def loss(apply, params):
    return sum(jnp.sum(jnp.sin(x)) for x in apply(params))

  ours = lambda p: encoder.apply({'params': p}, frame)  # noqa: E731
  plain = lambda p: _plain_encoder(p, frame, num_downsample)  # noqa: E731
  for a, b in zip(ours(params), plain(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  got = jax.grad(functools.partial(loss, ours))(params)
  want = jax.grad(functools.partial(loss, plain))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

  # Only the top features enter the loss, as in the predictor (no recall).
  _, backward = jax.vjp(lambda p: jnp.sum(ours(p)[-1]), params)
  kept = [leaf.shape for leaf in jax.tree.leaves(backward)]
  full_resolution = (2, 16, 16, HIDDEN)
  assert (full_resolution in kept) == (not recompute or num_downsample == 0), (
      kept)
