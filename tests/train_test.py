"""Tests of the training loop on configs/tiny.py: schedule, outputs, resume,
errors, half precision, several devices, and a SIGKILL in the middle."""
import errno
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from configs import mmnist
from stau_jax import checkpoints
from stau_jax import data
from stau_jax import distributed
from stau_jax import errors
from stau_jax import models
from stau_jax import outputs
from stau_jax import sampling
from stau_jax import summaries
from stau_jax import train
from tests import runs

runs.enable_compilation_cache()

STEPS = 12


def _config(**overrides):
  return runs.tiny_config(**{'num_train_steps': STEPS,
                             'checkpoint_every_steps': 6,
                             'eval_every_steps': STEPS, 'log_every_steps': 6,
                             **overrides})


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """(config, workdir, final state) of a 12-step tiny run."""
  workdir = str(tmp_path_factory.mktemp('tiny_run'))
  config = _config()
  return config, workdir, train.train_and_evaluate(config, workdir)


def _copy(tiny_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_run[1], workdir)
  return workdir


def _flat(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]}


def _reference_learning_rates(config, num_steps):
  """The reference loop: update itr uses lr, then decays if itr >= start and
  itr % every == 0."""
  lr, rates = config.learning_rate, []
  for itr in range(1, num_steps + 1):
    rates.append(lr)
    if (itr >= config.lr_decay_start_step and
        itr % config.lr_decay_every_steps == 0):
      lr *= config.lr_decay_rate
  return rates


@pytest.mark.parametrize('get_config', [mmnist.get_config, _config])
def test_learning_rate_schedule_matches_reference(get_config):
  config = get_config()
  num_steps = 60_001 if config.name == 'mmnist' else 60
  reference = _reference_learning_rates(config, num_steps)
  schedule = train.create_learning_rate_schedule(config)
  counts = np.unique(np.concatenate([
      np.arange(0, 60), np.arange(49_990, 50_010), np.arange(51_995, 52_005),
      [59_999, 60_000]]).clip(max=num_steps - 1))
  np.testing.assert_allclose(jax.vmap(schedule)(counts),
                             [reference[c] for c in counts], rtol=1e-5)


def test_training_writes_losses_checkpoints_and_metrics(tiny_run):
  config, workdir, state = tiny_run
  assert int(state.step) == STEPS
  records = summaries.read_losses(workdir)
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))
  losses = [r['loss'] for r in records]
  assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < losses[0]
  schedule = train.create_learning_rate_schedule(config)
  for r in records:
    assert r['learning_rate'] == pytest.approx(float(schedule(r['step'] - 1)))
    assert r['eta'] == pytest.approx(
        float(sampling.sampling_eta(config, r['step'] - 1)), abs=1e-6)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '6']
  assert (json.loads(checkpoints.read_config(workdir).to_json()) ==
          json.loads(config.to_json()))
  with open(os.path.join(workdir, 'eval', 'step_000012.json')) as f:
    result = json.load(f)
  assert result['step'] == STEPS and result['count'] == 16
  assert result['test_set']['num_sequences'] == 16
  assert result['test_set']['source'] == ('generated from bundled held-out '
                                          'digits')
  assert set(result['mean']) == {'mse', 'mae', 'psnr', 'ssim', 'ssim_dr1'}
  assert len(result['per_frame']['mse']) == 4
  assert 'mean' in open(os.path.join(workdir, 'eval', 'step_000012.txt')).read()
  samples = sorted(os.listdir(os.path.join(workdir, 'samples')))
  assert samples == ['step_000012.png'] + [f'step_000012_{i}.gif'
                                           for i in range(4)]


def _events(workdir):
  """All events of the workdir's TensorBoard files (TFRecord framing)."""
  events = []
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      with open(os.path.join(workdir, name), 'rb') as f:
        payload = f.read()
      offset = 0
      while offset < len(payload):
        (length,) = struct.unpack('<Q', payload[offset:offset + 8])
        events.append(event_pb2.Event.FromString(
            payload[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
  return events


def test_tensorboard_summaries(tiny_run):
  events = _events(tiny_run[1])
  tags = {(v.tag, e.step) for e in events for v in e.summary.value}
  for tag in ('train/loss', 'train/learning_rate', 'train/eta',
              'train/steps_per_sec'):
    assert (tag, 6) in tags and (tag, 12) in tags
  for tag in ('eval/mse', 'eval/mae', 'eval/psnr', 'eval/ssim',
              'eval/ssim_dr1', 'samples'):
    assert (tag, 12) in tags
  image = next(v.image for e in events for v in e.summary.value
               if v.tag == 'samples')
  assert image.encoded_image_string.startswith(b'\x89PNG')


def test_finished_run_resumes_without_training_and_continues(tiny_run,
                                                             tmp_path):
  config, _, state = tiny_run
  workdir = _copy(tiny_run, tmp_path)
  again = train.train_and_evaluate(config, workdir)
  assert int(again.step) == STEPS
  for name, value in _flat(state.params).items():
    np.testing.assert_array_equal(_flat(again.params)[name], value)
  longer = train.train_and_evaluate(_config(num_train_steps=STEPS + 2),
                                    workdir)
  assert int(longer.step) == STEPS + 2
  records = summaries.read_losses(workdir)
  assert [r['step'] for r in records] == list(range(1, STEPS + 3))
  assert records[:STEPS] == summaries.read_losses(tiny_run[1])


def _listing(workdir):
  return sorted(os.path.relpath(os.path.join(d, f), workdir)
                for d, _, files in os.walk(workdir) for f in files)


def test_incompatible_config_is_an_error(tiny_run, tmp_path):
  workdir = _copy(tiny_run, tmp_path)
  before = _listing(workdir)
  config = _config()
  config.model.num_hidden = 16
  with pytest.raises(checkpoints.CheckpointError,
                     match='config.model.num_hidden = 8, but the current '
                     'config has 16'):
    train.train_and_evaluate(config, workdir)
  assert _listing(workdir) == before


def test_corrupt_checkpoint_is_an_error(tiny_run, tmp_path):
  workdir = _copy(tiny_run, tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '12')
  for directory, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(directory, name), 'wb') as f:
        f.write(b'garbage')
  with pytest.raises(checkpoints.CheckpointError, match='cannot be restored'):
    train.train_and_evaluate(_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '6']


def test_checkpoints_without_config_json_are_an_error(tiny_run, tmp_path):
  workdir = _copy(tiny_run, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(checkpoints.CheckpointError, match='config.json'):
    train.train_and_evaluate(_config(), workdir)


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch):
  create_train_iterator = data.create_train_iterator

  def poisoned(config, *, start_step=0, **kwargs):
    batches = create_train_iterator(config, start_step=start_step, **kwargs)
    for index, batch in enumerate(batches, start_step):
      yield batch * np.nan if index >= 8 else batch  # update 9 sees NaN

  monkeypatch.setattr(data, 'create_train_iterator', poisoned)
  workdir = str(tmp_path)
  config = _config(checkpoint_every_steps=4, log_every_steps=4)
  with pytest.raises(FloatingPointError,
                     match=r'Loss is nan at step 9; the last good checkpoint '
                     r'\(step 8\)'):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']
  params, _ = checkpoints.load_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def _train_step(config, model):
  """(replicated fresh state, pmapped train step) of the prediction loss."""
  optimizer = train.create_optimizer(config)
  state = train.create_train_state(
      config, lambda rng: models.init_params(model, config, rng), optimizer)
  return (distributed.replicate(state), train.make_train_step(
      train.prediction_loss(model, config), optimizer, config))


def test_half_precision_trains_in_bfloat16_with_float32_params():
  config = _config(half_precision=True)
  model = models.create_model(config, half_precision=True)
  state, step = _train_step(config, model)
  batches = data.create_train_iterator(config, num_devices=1)
  losses = []
  for _ in range(3):
    state, step_metrics = step(state, next(batches), None)
    losses.append(float(step_metrics['loss'][0]))
  assert np.all(np.isfinite(losses))
  assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {
      jnp.dtype(jnp.float32)}


def test_half_precision_loss_curve_stays_within_2_percent_of_float32():
  """300 steps of configs/tiny.py on the same batches (the CPU's mixed
  precision: bfloat16 convolution operands, float32 math)."""
  curves = []
  for half_precision in (False, True):
    config = _config(half_precision=half_precision, num_train_steps=300)
    state, step = _train_step(config, models.create_model(
        config, half_precision=half_precision))
    batches = data.create_train_iterator(config, num_devices=1)
    losses = []
    for _ in range(300):
      state, step_metrics = step(state, next(batches), None)
      losses.append(step_metrics['loss'][0])
    curves.append(np.asarray(jax.device_get(losses)))
  full, half = curves
  # Windows of 10 steps, as the training log reports them.
  full, half = full.reshape(30, 10).mean(1), half.reshape(30, 10).mean(1)
  assert full[-1] < 0.5 * full[0]  # it learns
  np.testing.assert_allclose(half, full, rtol=0.02)


def test_reverse_scheduled_sampling_trains():
  config = _config(reverse_scheduled_sampling=True)
  state, step = _train_step(config, models.create_model(config))
  state, step_metrics = step(state, next(
      data.create_train_iterator(config, num_devices=1)), None)
  assert np.isfinite(float(step_metrics['loss'][0]))
  assert float(step_metrics['eta'][0]) == 0.5


_TRAIN_AND_SAVE = """
import sys
import jax
import numpy as np
from configs import tiny
from stau_jax import train
config = tiny.get_config()
config.update(num_train_steps={steps}, checkpoint_every_steps=6,
              eval_every_steps={steps}, log_every_steps=6)
state = train.train_and_evaluate(config, sys.argv[1])
leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
np.savez(sys.argv[2], **{{jax.tree_util.keystr(p): np.asarray(x)
                         for p, x in leaves}})
print(jax.local_device_count(), 'devices')
"""


def test_two_devices_give_the_same_parameters_as_one(tiny_run, tmp_path):
  result = runs.python(
      '-c', _TRAIN_AND_SAVE.format(steps=STEPS), str(tmp_path / 'run'),
      str(tmp_path / 'params.npz'),
      env=runs.environment(XLA_FLAGS=runs.TWO_CPU_DEVICES))
  assert '2 devices' in result.stdout
  two_devices = np.load(tmp_path / 'params.npz')
  one_device = _flat(tiny_run[2].params)
  assert set(two_devices) == set(one_device)
  # Two half-batch gradients averaged are the full-batch gradient up to
  # float32 summation order; 12 Adam steps (about 1e-3 each) carry that to
  # at most 1.7e-5 (2026-12-07); a wrong reduction moves steps, not 1e-5.
  for name, value in one_device.items():
    np.testing.assert_allclose(two_devices[name], value, rtol=1e-4, atol=3e-5,
                               err_msg=name)
  np.testing.assert_allclose(
      [r['loss'] for r in summaries.read_losses(str(tmp_path / 'run'))],
      [r['loss'] for r in summaries.read_losses(tiny_run[1])], rtol=1e-5)


def test_sigkill_and_restart_give_the_same_losses(tmp_path):
  steps = 60
  overrides = (f'--config.num_train_steps={steps}',
               '--config.checkpoint_every_steps=10',
               '--config.eval_every_steps=1000', '--config.log_every_steps=5')
  uninterrupted = str(tmp_path / 'uninterrupted')
  runs.python(*runs.train_args(uninterrupted, *overrides))

  killed = str(tmp_path / 'killed')
  process = subprocess.Popen(
      [sys.executable, *runs.train_args(killed, *overrides)],
      env=runs.environment(), cwd=runs.REPO, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(killed, 'checkpoints', '20')):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert summaries.read_losses(killed)[-1]['step'] < steps  # killed mid-way
  assert str(steps) not in os.listdir(os.path.join(killed, 'checkpoints'))

  result = runs.python(*runs.train_args(killed, *overrides))
  assert 'Resuming from the checkpoint of step' in result.stderr
  expected = summaries.read_losses(uninterrupted)
  restarted = summaries.read_losses(killed)
  assert [r['step'] for r in restarted] == list(range(1, steps + 1))
  np.testing.assert_allclose([r['loss'] for r in restarted],
                             [r['loss'] for r in expected], rtol=1e-6)


def test_second_run_on_a_busy_workdir_is_refused_before_any_write(tmp_path):
  workdir = str(tmp_path / 'run')
  with checkpoints.workdir_lock(workdir):
    before = _listing(workdir)
    with pytest.raises(checkpoints.WorkdirBusyError, match='already training'):
      train.train_and_evaluate(_config(), workdir)
    assert _listing(workdir) == before


def test_update_that_breaks_the_parameters_is_never_checkpointed(tmp_path):
  # The loss of step 1 is computed before its update and is finite, but a
  # learning rate of 1e6 leaves parameters whose loss is NaN: no checkpoint
  # may hold them, and a 1-step run must not end with them.
  workdir = str(tmp_path)
  config = _config(learning_rate=1e6, num_train_steps=1,
                   checkpoint_every_steps=1)
  with pytest.raises(FloatingPointError,
                     match='parameters after step 1 give .*nan; no checkpoint '
                     'had been written'):
    train.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == []
  assert not os.path.exists(os.path.join(workdir, 'eval'))


def test_torn_last_loss_line_is_dropped_on_resume(tiny_run, tmp_path, caplog):
  workdir = _copy(tiny_run, tmp_path)
  with open(os.path.join(workdir, summaries.LOSSES_FILE), 'a') as f:
    f.write('{"step": 13, "loss": 0.0')  # power loss mid-write
  state = train.train_and_evaluate(_config(), workdir)
  assert int(state.step) == STEPS
  assert 'Dropping the incomplete last line' in caplog.text
  assert summaries.read_losses(workdir) == summaries.read_losses(tiny_run[1])


@pytest.mark.parametrize('field, value, message', [
    ('num_eval_batches', 0, 'num_eval_batches must be a positive integer, '
     'or -1'),
    ('data.num_test_sequences', 0, 'num_test_sequences=0 must be positive'),
    ('data.image_size', (16,), r'image_size=\(16,\) must be \(height, '
     r'width\)'),  # what --config.data.image_size=16 gives
])
def test_every_field_is_validated_before_step_one(tmp_path, field, value,
                                                  message):
  config = _config()
  parent, name = (config.data, field[5:]) if field.startswith('data.') else (
      config, field)
  with config.unlocked():
    parent[name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_resume_logs_changed_training_fields(tiny_run, tmp_path, caplog):
  workdir = _copy(tiny_run, tmp_path)
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(_config(seed=7, batch_size=2), workdir)
  assert 'Resuming with config.batch_size = 2 (the run started with 4)' in (
      caplog.text)
  assert 'Resuming with config.seed = 7 (the run started with 0)' in (
      caplog.text)


def test_progress_every_interval_with_eta_in_training_and_evaluation(
    tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(summaries, 'PROGRESS_EVERY_SECS', 0)
  config = _config(num_train_steps=4, log_every_steps=100,
                   checkpoint_every_steps=100, num_eval_batches=-1)
  config.data.num_test_sequences = 24  # 3 batches of 8
  train.train_and_evaluate(config, str(tmp_path))
  for step in range(1, 5):
    assert f'step {step}/4 | loss' in caplog.text
  assert 'steps/s | ETA 0:00:00' in caplog.text
  for index in (1, 2):
    assert f'Evaluating: {index}/3 batches of 8' in caplog.text
  assert 'batches/s | ETA 0:00:0' in caplog.text


def _stopping_iterator(monkeypatch, stop_index, error):
  """Makes the training batches raise `error` when update stop_index + 1
  asks for its batch."""
  create_train_iterator = data.create_train_iterator

  def stopping(config, *, start_step=0, **kwargs):
    batches = create_train_iterator(config, start_step=start_step, **kwargs)
    for index, batch in enumerate(batches, start_step):
      if index == stop_index:
        raise error
      yield batch

  monkeypatch.setattr(data, 'create_train_iterator', stopping)


def test_ctrl_c_names_the_step_and_the_checkpoint_to_resume_from(
    tmp_path, monkeypatch):
  workdir = str(tmp_path)
  config = _config(checkpoint_every_steps=4, log_every_steps=4)
  _stopping_iterator(monkeypatch, 9, KeyboardInterrupt())
  with pytest.raises(errors.TrainingStopped,
                     match=r'^Training interrupted at step 10: the last good '
                     r'checkpoint \(step 8\) is kept in .*; run the same '
                     r'command to resume$'):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']
  assert not os.path.exists(os.path.join(workdir, checkpoints.LOCK_FILE))
  monkeypatch.undo()
  assert int(train.train_and_evaluate(config, workdir).step) == STEPS


@pytest.mark.parametrize('where', ['checkpoint', 'losses'])
def test_full_disk_names_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                  where):
  workdir = str(tmp_path)
  config = _config(checkpoint_every_steps=4, log_every_steps=4)
  full = OSError(errno.ENOSPC, 'No space left on device')
  if where == 'checkpoint':
    save = checkpoints.save

    def save_until_full(manager, state):
      if int(state.step) == 8:
        raise full
      save(manager, state)
    monkeypatch.setattr(checkpoints, 'save', save_until_full)
  else:
    write_losses = summaries.SummaryWriter.write_losses

    def write_until_full(self, records):
      if records[-1]['step'] == 8:
        raise outputs.OutputError('The disk is full') from full
      write_losses(self, records)
    monkeypatch.setattr(summaries.SummaryWriter, 'write_losses',
                        write_until_full)
  with pytest.raises(errors.TrainingStopped,
                     match=r'^The disk is full: training stopped at step 8: '
                     r'the last good checkpoint \(step 4\) is kept in '):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4']


def test_first_lines_report_compile_time_and_a_run_of_more_than_a_day(
    tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(train, 'SLOW_RUN_SECS', 0)  # every run is "slow"
  train.train_and_evaluate(_config(num_train_steps=3, log_every_steps=1),
                           str(tmp_path))
  assert re.search(r'step 1/3 \| loss [\d.]+ \| lr 0.001 \| eta [\d.]+ \| '
                   r'compiled and ran the first step in [\d.]+ s\n',
                   caplog.text)
  assert 'nan' not in caplog.text
  slow = [r.getMessage() for r in caplog.records
          if 'days' in r.getMessage()]
  assert len(slow) == 1 and re.match(
      r'At [\d.e+-]+ steps/s the remaining 1 steps take [\d.]+ days\. For a '
      r'quick run use configs/tiny.py on a CPU .*launch/gpu_single.sh',
      slow[0])


def test_any_task_trains_with_the_loop(tmp_path):
  """A task that is no video model: linear regression to known weights."""
  true_weights = np.asarray([1.0, -2.0, 0.5], np.float32)

  def batches(start_step):
    rng = np.random.default_rng(start_step)
    while True:
      x = rng.normal(size=(1, 32, 3)).astype(np.float32)
      yield {'x': x, 'y': x @ true_weights}

  def loss(params, batch, rng, step):
    del rng, step
    error = batch['x'] @ params['w'] - batch['y']
    return jnp.mean(error**2), {'max_error': jnp.max(jnp.abs(error))}

  def evaluate_params(params):
    return {'distance': float(np.linalg.norm(params['w'][0] -
                                             true_weights))}, None

  evaluations = []
  task = train.Task(
      init_params=lambda rng: {'w': jnp.zeros(3)}, loss=loss,
      train_batches=batches, evaluate=evaluate_params,
      write_evaluation=lambda writer, step, result, samples: (
          evaluations.append((step, result))),
      description=lambda params: 'linear regression', architecture_fields=())
  config = _config(num_train_steps=300, learning_rate=0.05,
                   lr_decay_start_step=1000, eval_every_steps=150,
                   checkpoint_every_steps=300, log_every_steps=100)
  state = train.fit(config, str(tmp_path), lambda: task)
  np.testing.assert_allclose(state.params['w'], true_weights, atol=1e-3)
  assert [step for step, _ in evaluations] == [150, 300]
  assert evaluations[-1][1]['distance'] < 1e-3
  records = summaries.read_losses(str(tmp_path))
  assert [r['step'] for r in records] == list(range(1, 301))
  assert set(records[0]) == {'step', 'loss', 'learning_rate', 'max_error'}
