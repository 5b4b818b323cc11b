"""train.train_step retraces the authors' training (tests/vectors/
stau_trajectory.npz): their initial weights, five Adam steps on their loss,
with teacher forcing and free running; the losses and the final weights."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stau_jax import convert_torch
from stau_jax import distributed
from stau_jax import models
from stau_jax import train
from tests import convert_torch_test

VECTOR = os.path.join(os.path.dirname(__file__), 'vectors',
                      'stau_trajectory.npz')
# The sampling mask's eta of each mode: 1 feeds every true frame, 0 none.
MODES = {'teacher_forcing': 1.0, 'free_running': 0.0}


def _state_dict(data, prefix):
  return {key[len(prefix):]: data[key] for key in data.files
          if key.startswith(prefix)}


@pytest.fixture(scope='module')
def vector():
  return np.load(VECTOR)


@pytest.mark.parametrize('mode', MODES)
def test_train_steps_retrace_the_authors_losses_and_weights(vector, mode):
  config = convert_torch_test.reference_config(vector)
  frames = vector['frames']
  config.batch_size = frames.shape[1]
  config.learning_rate = 1e-3
  config.sampling_start_value = MODES[mode]
  config.sampling_changing_rate = 0.0
  params = convert_torch.convert_state_dict(
      _state_dict(vector, 'state_dict/'), config)
  expected = convert_torch.convert_state_dict(
      _state_dict(vector, f'{mode}/state_dict/'), config)
  model = models.create_model(config)
  optimizer = train.create_optimizer(config)
  step = train.make_train_step(train.prediction_loss(model, config),
                               optimizer, config)
  state = distributed.replicate(train.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=optimizer.init(params), rng=jax.random.PRNGKey(0)))
  losses = []
  for batch in frames:
    state, metrics = step(state, batch[None], None)
    losses.append(float(metrics['loss'][0]))
  np.testing.assert_allclose(losses, vector[f'{mode}/losses'], rtol=1e-5)
  trained = jax.device_get(jax.tree_util.tree_map(lambda x: x[0],
                                                  state.params))
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), expected,
                                 params)
  assert min(jax.tree_util.tree_leaves(moved)) > 1e-4  # every weight trained
  for path, value in jax.tree_util.tree_leaves_with_path(trained):
    reference = expected
    for key in path:
      reference = reference[key.key]
    np.testing.assert_allclose(value, reference, rtol=0, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))
