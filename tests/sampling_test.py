"""Tests of the scheduled-sampling schedule and masks."""
import math

import jax
import numpy as np
import pytest

from configs import mmnist
from stau_jax import sampling


def _reference_etas(config, num_steps):
  """The reference's loop: eta -= rate while itr < stop, else 0 (itr from 1)."""
  eta, etas = config.sampling_start_value, []
  for itr in range(1, num_steps + 1):
    if itr < config.sampling_stop_step:
      eta -= config.sampling_changing_rate
    else:
      eta = 0.0
    etas.append(max(eta, 0.0))
  return etas


def _reference_reverse_etas(config, itr):
  """(r_eta, eta) of PredRNN-v2's reverse schedule at iteration itr."""
  begin, end = config.r_sampling_step_1, config.r_sampling_step_2
  if itr < begin:
    return 0.5, 0.5
  if itr < end:
    return (1.0 - 0.5 * math.exp(-(itr - begin) / config.r_exp_alpha),
            0.5 - 0.5 / (end - begin) * (itr - begin))
  return 1.0, 0.0


def test_eta_follows_the_reference_loop():
  config = mmnist.get_config()
  steps = np.concatenate([np.arange(0, 50), np.arange(49_990, 50_010),
                          [100_000]])
  reference = _reference_etas(config, 100_001)
  etas = jax.vmap(lambda s: sampling.sampling_eta(config, s))(steps)
  np.testing.assert_allclose(etas, [reference[s] for s in steps], atol=1e-5)
  assert float(sampling.sampling_eta(config, 0)) == pytest.approx(1 - 2e-5)
  assert float(sampling.sampling_eta(config, 49_998)) > 0
  assert float(sampling.sampling_eta(config, 49_999)) == 0


def test_eta_is_floored_at_zero():
  config = mmnist.get_config()
  config.sampling_changing_rate = 0.1
  assert float(sampling.sampling_eta(config, 30)) == 0


def test_mask_is_deterministic_per_step_with_the_right_rate():
  config = mmnist.get_config()
  key = jax.random.PRNGKey(0)
  mask = sampling.sampling_mask(config, key, 25_000, 4096)
  assert mask.shape == (4096, 9, 1, 1, 1)
  assert set(np.unique(mask)) <= {0.0, 1.0}
  eta = float(sampling.sampling_eta(config, 25_000))
  assert float(mask.mean()) == pytest.approx(eta, abs=0.01)
  np.testing.assert_array_equal(
      mask, sampling.sampling_mask(config, key, 25_000, 4096))
  assert not np.array_equal(mask,
                            sampling.sampling_mask(config, key, 25_001, 4096))
  assert float(sampling.sampling_mask(config, key, 60_000, 64).max()) == 0
  assert float(sampling.sampling_mask(config, key, 0, 64).min()) == 1


def test_reverse_schedule_matches_predrnn_v2():
  config = mmnist.get_config()
  config.reverse_scheduled_sampling = True
  for step in (0, 24_998, 24_999, 30_000, 49_998, 49_999, 70_000):
    r_eta, eta = _reference_reverse_etas(config, step + 1)
    assert float(sampling.reverse_sampling_eta(config, step)) == pytest.approx(
        r_eta, abs=1e-6)
    assert float(sampling.sampling_eta(config, step)) == pytest.approx(
        eta, abs=1e-6)


def test_reverse_mask_covers_inputs_and_future():
  config = mmnist.get_config()
  config.reverse_scheduled_sampling = True
  assert sampling.num_masked_steps(config) == 18
  mask = sampling.sampling_mask(config, jax.random.PRNGKey(1), 60_000, 512)
  assert mask.shape == (512, 18, 1, 1, 1)
  np.testing.assert_array_equal(mask[:, :9], 1)  # r_eta = 1: true inputs
  np.testing.assert_array_equal(mask[:, 9:], 0)  # eta = 0: own predictions
  early = sampling.sampling_mask(config, jax.random.PRNGKey(1), 100, 4096)
  assert float(early.mean()) == pytest.approx(0.5, abs=0.02)


def test_bad_sampling_config_is_rejected():
  config = mmnist.get_config()
  config.sampling_start_value = 1.5
  with pytest.raises(ValueError, match='sampling_start_value'):
    sampling.validate_sampling_config(config)
  config = mmnist.get_config()
  config.reverse_scheduled_sampling = True
  config.r_sampling_step_2 = 10
  with pytest.raises(ValueError, match='r_sampling_step_1'):
    sampling.validate_sampling_config(config)
