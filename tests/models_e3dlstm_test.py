"""Tests for stau_jax.models.e3dlstm: OpenSTL's model, converted, predicts the same frames."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from stau_jax import convert_torch
from stau_jax import models
from stau_jax.models import e3dlstm
from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('e3dlstm'),
                         ids=os.path.basename)
def test_converted_openstl_model_predicts_its_frames(path):
  openstl_vectors.check(path)


def _tiny_config(**data_overrides):
  config = tiny.get_config()
  config.model.cell = 'e3dlstm'
  config.data.update(data_overrides)
  return config


def _frames(config, batch=2):
  height, width = config.data.image_size
  return jax.random.uniform(jax.random.PRNGKey(0), (
      batch, config.data.total_length, height, width, config.data.channels))


def test_stau_front_end_passes_the_window_of_each_layer_up(fast_compile):
  config = _tiny_config()
  model = models.create_model(config)
  frames = _frames(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  predictions, hidden = jax.jit(
      lambda p, f: model.apply({'params': p}, f, return_hidden=True))(
          params, frames)
  assert predictions.shape == frames[:, 1:].shape
  # (B, T-1, L, h, w, D*C): tiny's 16x16 frames, one downsampling.
  assert hidden.shape == (2, 7, 2, 8, 8, e3dlstm.WINDOW * 8)
  assert np.all(np.isfinite(predictions))


def test_program_size_does_not_grow_with_frames():
  def lines(total_length):
    config = _tiny_config(total_length=total_length)
    config.model.layer_loop = 'scan'
    model = models.create_model(config)
    params = models.param_shapes(config)
    frames = jax.ShapeDtypeStruct(_frames(config).shape, jnp.float32)
    return jax.jit(lambda p, f: model.apply({'params': p}, f)).lower(
        params, frames).as_text().count('\n')

  # The history buffer grows with T, the program does not.
  assert lines(6) == lines(12)


def test_attention_ignores_history_slots_not_yet_written():
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  query = jax.random.normal(keys[0], (2, e3dlstm.WINDOW, 3, 4, 5))
  history = jax.random.normal(keys[1], (2, 6, e3dlstm.WINDOW * 3 * 4, 5))
  valid = jnp.arange(6) <= 2
  garbage = jnp.where(valid[:, None, None], history,
                      1e3 * jax.random.normal(keys[2], history.shape))
  np.testing.assert_allclose(
      e3dlstm.eidetic_attention(query, garbage, valid),
      e3dlstm.eidetic_attention(query, history[:, :3], valid[:3]), atol=1e-6)


@pytest.mark.parametrize('depth', [1, 2])
def test_conv3d_kernel_folds_into_a_2d_kernel_on_depth_major_channels(depth):
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  x = jax.random.normal(keys[0], (2, depth, 5, 6, 3))  # (B, D, h, w, I)
  torch_kernel = np.asarray(jax.random.normal(keys[1], (4, 3, depth, 3, 3)))
  # A 3-D conv over the whole depth ('VALID'), 'SAME' in space.
  expected = jax.lax.conv_general_dilated(
      x, jnp.asarray(torch_kernel.transpose(2, 3, 4, 1, 0)), (1, 1, 1),
      ((0, 0), (1, 1), (1, 1)), dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
  kernel = convert_torch._conv3d_as_conv2d(torch_kernel)
  actual = jax.lax.conv_general_dilated(
      e3dlstm.flatten_window(x), jnp.asarray(kernel), (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(actual, expected[:, 0], atol=1e-5)
