"""Tests for stau_jax.models.predrnnv2: OpenSTL's model, converted, predicts
the same frames and gives the same decoupling loss; the loss trains."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from stau_jax import data
from stau_jax import distributed
from stau_jax import models
from stau_jax import sampling
from stau_jax import train
from stau_jax.models import predictor
from stau_jax.models import predrnnv2
from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('predrnnv2'),
                         ids=os.path.basename)
def test_converted_openstl_model_predicts_its_frames_and_loss(path):
  openstl_vectors.check(path)


def _numpy_decoupling_loss(delta_c, delta_m, kernel, beta):
  """OpenSTL's formula, channels first, one (step, layer) at a time."""
  terms = []
  for c, m in zip(delta_c.reshape(-1, *delta_c.shape[2:]),
                  delta_m.reshape(-1, *delta_m.shape[2:])):
    vectors = []
    for x in (c, m):  # (B, h, w, C) -> adapter -> (B, C, h*w), normalized
      x = np.einsum('bhwi,io->bohw', x, kernel[0, 0]).reshape(
          x.shape[0], kernel.shape[-1], -1)
      vectors.append(x / np.maximum(
          np.linalg.norm(x, axis=2, keepdims=True), 1e-12))
    u, v = vectors
    cosine = (u * v).sum(2) / np.maximum(
        np.linalg.norm(u, axis=2) * np.linalg.norm(v, axis=2), 1e-8)
    terms.append(np.abs(cosine).mean())
  return beta * np.mean(terms)


def test_decoupling_loss_is_openstls_formula():
  rng = np.random.default_rng(0)
  delta_c, delta_m = (rng.normal(size=(3, 2, 2, 4, 5, 6)).astype(np.float32)
                      for _ in range(2))
  delta_m[1, 0, 1] = 0  # an all-zero delta: its cosines are 0
  module = predrnnv2.DecouplingLoss(6, 0.3, predictor.conv_factory())
  terms = {'memory_deltas': ((delta_c, delta_m),)}
  params = module.init(jax.random.PRNGKey(0), terms)['params']
  kernel = np.asarray(params['adapter']['kernel'])
  np.testing.assert_allclose(
      module.apply({'params': params}, terms),
      _numpy_decoupling_loss(delta_c, delta_m, kernel, 0.3), rtol=1e-5)


def test_bad_decouple_beta_is_a_clear_error():
  config = tiny.get_config()
  config.model.update(cell='predrnnv2', decouple_beta=-0.1)
  with pytest.raises(ValueError, match='decouple_beta must be a number >= 0'):
    models.validate_model_config(config)


def test_a_training_step_adds_the_decoupling_loss_and_moves_every_parameter():
  config = tiny.get_config()
  config.model.cell = 'predrnnv2'
  config.reverse_scheduled_sampling = True
  model = models.create_model(config)
  optimizer = train.create_optimizer(config)
  initial = train.create_train_state(
      config, lambda rng: models.init_params(model, config, rng), optimizer)
  frames = next(data.create_train_iterator(config, num_devices=1))
  step = train.make_train_step(train.prediction_loss(model, config),
                               optimizer, config)
  state, step_metrics = step(distributed.replicate(initial), frames, None)
  # The step's loss is the MSE plus the weighted decoupling loss.
  mask = sampling.sampling_mask(config, initial.rng, 0, config.batch_size)
  predictions, decoupling = models.predict_with_auxiliary_loss(
      model, initial.params, frames[0], mask)
  mse = jnp.mean(jnp.square(predictions - frames[0, :, 1:]))
  assert decoupling > 0.01 * mse
  np.testing.assert_allclose(step_metrics['loss'][0], mse + decoupling,
                             rtol=1e-5)
  # Adam moves every parameter with a finite non-zero gradient.
  updated = jax.tree_util.tree_map(lambda x: x[0], jax.device_get(state.params))
  for (path, before), after in zip(
      jax.tree_util.tree_flatten_with_path(initial.params)[0],
      jax.tree_util.tree_leaves(updated)):
    assert np.all(np.isfinite(after)), path
    assert np.abs(after - before).max() > 0, path
  for _ in range(2):
    state, step_metrics = step(state, frames, None)
    assert np.isfinite(step_metrics['loss'][0])
