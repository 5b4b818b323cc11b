"""Tests for stau_jax.checkpoints: config files, compatibility, save/restore."""
import json
import os
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from stau_jax import checkpoints
from stau_jax import train
from tests import runs


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


def test_a_saved_config_without_a_field_is_refused_not_crashed():
  saved = tiny.get_config()
  del saved.data['dataset']
  with pytest.raises(checkpoints.CheckpointError,
                     match='config.data.dataset = None, but the current '
                     'config has moving_mnist'):
    checkpoints.check_compatible(saved, tiny.get_config(), 'runs/x')


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


def test_resuming_with_other_digits_is_refused_with_the_reason():
  saved, current = tiny.get_config(), tiny.get_config()
  current.data.digits = 'tfds'
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"runs/x cannot resume: the run trained with "
                     r"config.data.digits='bundled' and this config resolves "
                     r"it to 'tfds'.*--config.data.digits=bundled"):
    checkpoints.check_compatible(saved, current, 'runs/x')
  saved.data.digits = 'auto'  # Recorded before digits were resolved.
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


def _lock_holder(workdir):
  with open(os.path.join(workdir, checkpoints.LOCK_FILE)) as f:
    return json.load(f)


def test_workdir_lock_admits_one_run_and_is_released(tmp_path):
  workdir = str(tmp_path)
  with checkpoints.workdir_lock(workdir):
    assert _lock_holder(workdir) == {'host': socket.gethostname(),
                                     'pid': os.getpid()}
    with pytest.raises(checkpoints.WorkdirBusyError, match='already training'):
      with checkpoints.workdir_lock(workdir):
        pass
  assert os.listdir(workdir) == []
  with checkpoints.workdir_lock(workdir):  # free again
    pass


def test_workdir_lock_of_a_live_process_or_another_host_is_refused(tmp_path):
  workdir = str(tmp_path)
  sleeper = subprocess.Popen(['sleep', '60'])
  try:
    for holder, message in [
        ({'host': socket.gethostname(), 'pid': sleeper.pid},
         f'process {sleeper.pid} on host {socket.gethostname()}'),
        ({'host': 'other-host', 'pid': 1}, 'process 1 on host other-host')]:
      (tmp_path / 'lock').write_text(json.dumps(holder))
      with pytest.raises(checkpoints.WorkdirBusyError, match=message):
        with checkpoints.workdir_lock(workdir):
          pass
      assert _lock_holder(workdir) == holder  # left alone
  finally:
    sleeper.kill()
    sleeper.wait()


def test_stale_workdir_lock_of_a_dead_process_is_taken_over(tmp_path,
                                                             caplog):
  workdir = str(tmp_path)
  finished = subprocess.Popen(['true'])
  finished.wait()
  (tmp_path / 'lock').write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': finished.pid}))
  with checkpoints.workdir_lock(workdir):
    assert _lock_holder(workdir)['pid'] == os.getpid()
  assert 'Taking over the workdir lock' in caplog.text
  assert str(finished.pid) in caplog.text
  assert os.listdir(workdir) == []


def test_concurrent_lockers_admit_exactly_one(tmp_path):
  # The holder keeps the lock until the test creates `release`, after the
  # others have given up, so slow starts cannot make this flaky.
  script = ('import os, sys, time\n'
            'from stau_jax import checkpoints\n'
            'try:\n'
            '  with checkpoints.workdir_lock(sys.argv[1]):\n'
            '    print("held", flush=True)\n'
            '    while not os.path.exists(sys.argv[2]):\n'
            '      time.sleep(0.05)\n'
            'except checkpoints.WorkdirBusyError:\n'
            '  print("busy")\n')
  release = tmp_path / 'release'
  processes = [subprocess.Popen(
      [sys.executable, '-c', script, str(tmp_path / 'run'), str(release)],
      env=runs.environment(), cwd=runs.REPO, stdout=subprocess.PIPE,
      text=True) for _ in range(4)]
  deadline = time.time() + 120
  while sum(p.poll() is not None for p in processes) < 3:
    assert time.time() < deadline
    time.sleep(0.05)
  release.touch()
  outputs = sorted(p.communicate(timeout=120)[0].strip() for p in processes)
  assert outputs == ['busy', 'busy', 'busy', 'held']
  assert os.listdir(tmp_path / 'run') == []


def test_checkpoint_with_flipped_bits_is_refused(tmp_path):
  workdir, config = str(tmp_path), tiny.get_config()
  checkpoints.write_config(workdir, config)
  manager = checkpoints.create_manager(workdir, config)
  state = _state(config, fill=0.25, step=3)
  checkpoints.save(manager, state)
  manager.wait_until_finished()
  step_dir = os.path.join(workdir, 'checkpoints', '3')
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir)
           for f in names]
  data_file = max(files, key=os.path.getsize)
  payload = bytearray(open(data_file, 'rb').read())
  for offset in (len(payload) // 3, len(payload) // 2, 2 * len(payload) // 3):
    flipped = bytearray(payload)
    flipped[offset] ^= 0x10
    with open(data_file, 'wb') as f:
      f.write(flipped)
    with pytest.raises(checkpoints.CheckpointError,
                       match=f'{step_dir}.*(corrupt|cannot be restored)'):
      checkpoints.load_params(workdir)
  with open(data_file, 'wb') as f:
    f.write(payload)
  params, _ = checkpoints.load_params(workdir)
  np.testing.assert_array_equal(params['bias'], np.full(4, 0.25))


def test_non_finite_state_is_never_saved(tmp_path):
  workdir, config = str(tmp_path), tiny.get_config()
  manager = checkpoints.create_manager(workdir, config)
  state = _state(config, step=2)
  state = state.replace(params={**state.params,
                                'bias': jnp.asarray([0., np.nan, 0., 0.])})
  with pytest.raises(FloatingPointError, match=r"step 2.*\['params'\]\['bias'\]"):
    checkpoints.save(manager, state)
  manager.wait_until_finished()
  assert manager.all_steps() == []


@pytest.mark.parametrize('content', ['{}', '{"model": {}}', '[1, 2]'])
def test_config_json_without_model_and_data_is_a_checkpoint_error(tmp_path,
                                                                   content):
  (tmp_path / 'config.json').write_text(content)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'no .*(model|data).* section \(.*config.json\)'):
    checkpoints.read_config(str(tmp_path))


def test_changed_fields_lists_every_differing_field():
  saved, current = tiny.get_config(), tiny.get_config()
  current.seed, current.learning_rate = 7, 0.5
  current.data.num_test_sequences = 8
  assert checkpoints.changed_fields(saved, current) == [
      ('data.num_test_sequences', 32, 8),
      ('learning_rate', saved.learning_rate, 0.5), ('seed', saved.seed, 7)]
