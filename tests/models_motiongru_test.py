"""Tests for stau_jax.models.motiongru: MotionRNN's model, converted, predicts
the same frames; the warp is zero-padded bilinear sampling."""
import os

import jax
import jax.numpy as jnp
from jax.scipy import ndimage
import numpy as np
import pytest

from configs import tiny
from stau_jax import models
from stau_jax.models import motiongru
from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('motiongru'),
                         ids=os.path.basename)
def test_converted_motionrnn_model_predicts_its_frames(path):
  openstl_vectors.check(path)


def test_warp_samples_bilinearly_with_zeros_outside():
  image = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5, 3))
  rows = jax.random.uniform(jax.random.PRNGKey(1), (2, 6, 7), minval=-2.5,
                            maxval=6.5)
  cols = jax.random.uniform(jax.random.PRNGKey(2), (2, 6, 7), minval=-2.5,
                            maxval=7.5)
  # Whole pixels, and points on and just past the border.
  rows = rows.at[:, 0].set(jnp.array([0., 3., -1., 4., -0.5, 3.5, 2.]))
  cols = cols.at[:, 0].set(jnp.array([0., 4., -1., 5., 4.5, -0.5, 1.]))
  sample = jax.jit(jax.vmap(jax.vmap(
      lambda channel, r, c: ndimage.map_coordinates(
          channel, [r, c], order=1, mode='constant', cval=0.),
      in_axes=(-1, None, None), out_axes=-1)))
  np.testing.assert_allclose(
      jax.jit(motiongru.bilinear_sample)(image, rows, cols),
      sample(image, rows, cols), atol=1e-6)


def test_gates_learn_from_the_default_init_with_the_stau_frontend(
    fast_compile):
  config = tiny.get_config()
  config.model.cell = 'motiongru'
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  height, width = config.data.image_size
  frames = jax.random.uniform(jax.random.PRNGKey(1), (
      2, config.data.total_length, height, width, config.data.channels))

  def loss(p):
    return jnp.mean((model.apply({'params': p}, frames) - frames[:, 1:])**2)

  grads = jax.jit(jax.grad(loss))(params)['unroll']['cell_0']['motion']
  for gate in ('update', 'reset', 'output'):
    assert float(jnp.abs(grads[gate]['kernel']).max()) > 0, gate


@pytest.mark.parametrize('overrides, message', [
    (dict(num_layers=1), 'num_layers >= 2'),
    (dict(num_hidden=3), 'num_hidden >= 4'),
    (dict(num_downsample=2), 'must be even; got 3x4'),
])
def test_unsupported_shapes_are_clear_errors(overrides, message):
  config = tiny.get_config()
  config.model.update(cell='motiongru', **overrides)
  config.data.image_size = (12, 16)
  with pytest.raises(ValueError, match=message):
    models.init_params(models.create_model(config), config,
                       jax.random.PRNGKey(0))
