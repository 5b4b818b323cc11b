"""Tests for stau_jax.predict: input handling, batching and the CLI."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from stau_jax import export
from stau_jax import models
from stau_jax import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
  config = tiny.get_config()
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  path = str(tmp_path_factory.mktemp('export') / 'tiny.export')
  export.save_export(path, params, config)
  return path, params, config


def _clips(num, config, length=None, seed=0):
  height, width = config.data.image_size
  return np.random.default_rng(seed).uniform(
      size=(num, length or config.data.total_length, height, width,
            config.data.channels)).astype(np.float32)


def test_predictions_are_the_models_future_frames(tiny_export):
  _, params, config = tiny_export
  clips = _clips(3, config)
  observed = clips.copy()
  observed[:, config.data.input_length:] = 0
  expected = models.create_model(config).apply({'params': params}, observed)
  future = predict.predict(params, config, clips, batch_size=3, clip=False)
  num_future = config.data.total_length - config.data.input_length
  assert future.shape == (3, num_future, 16, 16, 1)
  assert future.dtype == np.float32
  np.testing.assert_allclose(future, expected[:, -num_future:], atol=1e-5)


def test_batching_pads_the_last_batch_without_changing_results(tiny_export):
  _, params, config = tiny_export
  clips = _clips(5, config)
  np.testing.assert_allclose(
      predict.predict(params, config, clips, batch_size=2),
      predict.predict(params, config, clips, batch_size=5), atol=1e-5)


def test_uint8_and_channelless_input_equal_float_input(tiny_export):
  _, params, config = tiny_export
  clips = (_clips(2, config, length=config.data.input_length) * 255).astype(
      np.uint8)
  from_uint8 = predict.predict(params, config, clips[..., 0])
  from_float = predict.predict(params, config, clips.astype(np.float32) / 255)
  np.testing.assert_array_equal(from_uint8, from_float)
  assert from_uint8.min() >= 0 and from_uint8.max() <= 1


@pytest.mark.parametrize('frames, message', [
    (np.zeros((2, 8, 16, 16, 3), np.float32), r'are \(16, 16, 3\)'),
    (np.zeros((2, 8, 16), np.float32), 'must be'),
    (np.zeros((2, 3, 16, 16), np.float32), 'at least input_length=4'),
    (np.full((2, 8, 16, 16), 2.0, np.float32), r'in \[0, 1\]'),
    (np.zeros((2, 8, 16, 16), np.int32), 'uint8 or float'),
])
def test_bad_input_is_a_clear_error(tiny_export, frames, message):
  _, params, config = tiny_export
  with pytest.raises(ValueError, match=message):
    predict.predict(params, config, frames)


def test_cli_writes_predictions(tiny_export, tmp_path):
  path, params, config = tiny_export
  clips = (_clips(3, config) * 255).astype(np.uint8)
  np.save(tmp_path / 'in.npy', clips)
  subprocess.run(
      [sys.executable, '-m', 'stau_jax.predict', f'--export={path}',
       f'--input={tmp_path / "in.npy"}', f'--output={tmp_path / "out.npy"}',
       '--batch_size=2'], check=True, cwd=ROOT, capture_output=True)
  np.testing.assert_allclose(np.load(tmp_path / 'out.npy'),
                             predict.predict(params, config, clips), atol=1e-5)
