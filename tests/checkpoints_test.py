"""Tests for stau_jax.checkpoints: config files, compatibility, save/restore."""
import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from stau_jax import checkpoints
from stau_jax import train


def _state(config, fill=0.0, step=0):
  """A train state of `config`'s real structure, every parameter = fill."""
  params = {'unroll': {'cells': {'kernel': jnp.full((2, 3, 3, 4), fill)}},
            'bias': jnp.full((4,), fill)}
  optimizer = optax.adam(config.learning_rate)
  return train.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                          opt_state=optimizer.init(params),
                          rng=jnp.asarray([0, 7], jnp.uint32))


def _as_dict(config):
  return json.loads(config.to_json())


def test_config_round_trip(tmp_path):
  config = tiny.get_config()
  checkpoints.write_config(str(tmp_path), config)
  assert _as_dict(checkpoints.read_config(str(tmp_path))) == _as_dict(config)
  assert os.listdir(tmp_path) == ['config.json']  # no temporary file left


@pytest.mark.parametrize('content', [None, '{"model": '])
def test_missing_or_malformed_config_is_a_checkpoint_error(tmp_path, content):
  if content is not None:
    (tmp_path / 'config.json').write_text(content)
  with pytest.raises(checkpoints.CheckpointError,
                     match='Cannot read the run config .*config.json'):
    checkpoints.read_config(str(tmp_path))


@pytest.mark.parametrize('group, name, value', [
    ('model', 'conv_impl', 'xla'),  # how, not what: compatible
    ('model', 'layer_loop', 'unrolled'),
    ('model', 'remat', 'none'),
    ('data', 'image_size', [16, 16]),  # a list equals the saved tuple
    (None, 'learning_rate', 0.5),  # training fields may change on resume
    (None, 'batch_size', 2),
])
def test_implementation_and_training_fields_may_change(group, name, value):
  saved, current = tiny.get_config(), tiny.get_config()
  (current[group] if group else current)[name] = value
  checkpoints.check_compatible(saved, current, 'runs/x')


@pytest.mark.parametrize('group, name, value, message', [
    ('model', 'num_hidden', 16, r'config.model.num_hidden = 8, but the '
     r'current config has 16'),
    ('model', 'cell', 'mau', r'config.model.cell = stau'),
    ('data', 'total_length', 12, r'config.data.total_length = 8'),
])
def test_architecture_changes_are_refused(group, name, value, message):
  saved, current = tiny.get_config(), tiny.get_config()
  current[group][name] = value
  with pytest.raises(checkpoints.CheckpointError, match=message):
    checkpoints.check_compatible(saved, current, 'runs/x')


def test_save_then_restore_or_keep(tmp_path):
  workdir, config = str(tmp_path), tiny.get_config()
  manager = checkpoints.create_manager(workdir, config)
  fresh = _state(config)
  assert checkpoints.restore_or_keep(manager, fresh, config, workdir) is fresh
  checkpoints.write_config(workdir, config)
  checkpoints.save(manager, _state(config, fill=2.5, step=7))
  manager.wait_until_finished()
  restored = checkpoints.restore_or_keep(
      checkpoints.create_manager(workdir, config), fresh, config, workdir)
  assert int(restored.step) == 7
  np.testing.assert_array_equal(restored.params['bias'], np.full(4, 2.5))
  np.testing.assert_array_equal(restored.rng, [0, 7])
  params, saved_config = checkpoints.load_params(workdir)
  assert params['unroll']['cells']['kernel'].dtype == np.float32
  assert _as_dict(saved_config) == _as_dict(config)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'no checkpoint for step 3; it has steps \[7\]'):
    checkpoints.load_params(workdir, step=3)


def test_restoring_into_other_shapes_names_the_array(tmp_path):
  workdir, config = str(tmp_path), tiny.get_config()
  checkpoints.write_config(workdir, config)
  manager = checkpoints.create_manager(workdir, config)
  checkpoints.save(manager, _state(config, step=1))
  manager.wait_until_finished()
  other = _state(config)
  other = other.replace(params={**other.params, 'bias': jnp.zeros((5,))})
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"'bias'.* has shape \(4,\) but the current "
                           r'config needs \(5,\)'):
    checkpoints.restore_or_keep(manager, other, config, workdir)


def test_load_params_without_checkpoints_is_a_clear_error(tmp_path):
  checkpoints.write_config(str(tmp_path), tiny.get_config())
  with pytest.raises(checkpoints.CheckpointError,
                     match='has no checkpoints/ directory'):
    checkpoints.load_params(str(tmp_path))
