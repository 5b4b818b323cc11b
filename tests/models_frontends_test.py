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
