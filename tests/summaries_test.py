"""The run log: TensorBoard files its own reader parses, losses, evaluations,
samples, and writers of other processes that write nothing."""
import errno
import json
import logging
import os

import jax
import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_file_loader

from stau_jax import errors
from stau_jax import metrics
from stau_jax import outputs
from stau_jax import pictures
from stau_jax import summaries


def test_scalars_and_images_round_trip(tmp_path):
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.scalars({'train/loss': 0.5, 'eval/ssim': 0.25}, step=3)
  writer.image('samples', np.zeros((4, 6, 1), np.uint8), step=3)
  writer.close()
  events = list(event_file_loader.LegacyEventFileLoader(writer.path).Load())
  assert events[0].file_version == 'brain.Event:2'
  values = {v.tag: v for e in events[1:] for v in e.summary.value}
  assert values['train/loss'].simple_value == 0.5
  assert values['eval/ssim'].simple_value == 0.25
  assert (values['samples'].image.height, values['samples'].image.width) == (
      4, 6)
  assert all(e.step == 3 for e in events[1:])


def _values(writer):
  events = event_file_loader.LegacyEventFileLoader(writer.path).Load()
  return {v.tag: v.simple_value for e in events for v in e.summary.value}


def test_evaluation_files_carry_perceptual_metrics(tmp_path):
  """A set-level metric (FVD) reaches the JSON, the table and TensorBoard."""
  result = {'per_frame': {'mse': [1.0, 3.0], 'lpips': [0.1, 0.3]},
            'mean': {'mse': 2.0, 'lpips': 0.2, 'fvd': 123.5}, 'count': 16}
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.write_evaluation(7, result, result['mean'],
                          metrics.format_table(result))
  writer.close()
  with open(tmp_path / 'eval' / 'step_000007.json') as f:
    assert json.load(f) == {'step': 7, **result}
  table = (tmp_path / 'eval' / 'step_000007.txt').read_text()
  assert table.splitlines()[0].split() == ['frame', 'mse', 'lpips']
  assert 'fvd over 16 clips: 123.5000' in table
  assert _values(writer) == {'eval/mse': 2.0, 'eval/lpips': pytest.approx(0.2),
                             'eval/fvd': 123.5}


def test_samples_are_a_png_strip_and_one_gif_per_sequence(tmp_path):
  frames = np.random.default_rng(0).random((2, 6, 8, 8, 1), dtype=np.float32)
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.write_samples(3, frames, frames[:, 4:], input_length=4)
  writer.close()
  assert sorted(os.listdir(tmp_path / 'samples')) == [
      'step_000003.png', 'step_000003_0.gif', 'step_000003_1.gif']
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / 'samples' / 'step_000003.png')),
      pictures.samples_strip(frames, frames[:, 4:], 4)[..., 0])


def test_losses_append_read_and_truncate(tmp_path):
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.write_losses([{'step': s, 'loss': 1.0 / s} for s in (1, 2, 3)])
  writer.write_losses([{'step': 4, 'loss': 0.25}])
  assert [r['step'] for r in summaries.read_losses(str(tmp_path))] == [
      1, 2, 3, 4]
  writer.truncate_losses(2)
  assert summaries.read_losses(str(tmp_path)) == [{'step': 1, 'loss': 1.0},
                                                  {'step': 2, 'loss': 0.5}]
  assert summaries.read_losses(str(tmp_path / 'elsewhere')) == []


def test_garbled_loss_line_is_an_error_naming_file_and_line(tmp_path):
  path = tmp_path / summaries.LOSSES_FILE
  path.write_text('{"step": 1, "loss": 0.5}\nxx\n{"step": 2, "loss": 0.4}\n')
  with pytest.raises(errors.CheckpointError,
                     match=r"Line 2 is not a loss record: 'xx' \(.*"
                     r'train_losses.jsonl\)'):
    summaries.read_losses(str(tmp_path))


def test_writers_of_other_processes_write_nothing(tmp_path, monkeypatch,
                                                  caplog):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  writer = summaries.create_default_writer(str(tmp_path / 'run'))
  assert writer.just_logging
  frames = np.zeros((1, 6, 8, 8, 1), np.float32)
  result = {'mean': {'mse': 2.0}, 'per_frame': {'mse': [2.0]}, 'count': 1}
  with caplog.at_level(logging.INFO):
    writer.write_evaluation(5, result, result['mean'], 'the table')
  writer.write_losses([{'step': 5, 'loss': 1.0}])
  writer.truncate_losses(0)
  writer.scalars({'train/loss': 1.0}, 5)
  writer.write_samples(5, frames, frames[:, 4:], 4)
  writer.close()
  assert 'the table' in caplog.text  # still logged on every host
  assert not os.path.exists(tmp_path / 'run')
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  assert not summaries.create_default_writer(str(tmp_path)).just_logging


def test_progress_rate_and_time_left(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(summaries.time, 'time', lambda: clock[0])
  monkeypatch.setattr(summaries, 'PROGRESS_EVERY_SECS', 30)
  progress = summaries.Progress(10)
  assert progress.rate(10) is None and progress.eta(10, 100) == '?'
  clock[0] += 20
  assert progress.rate(30) == 1.0 and progress.elapsed() == 20
  assert progress.seconds_left(30, 100) == 70
  assert progress.eta(30, 3630) == '1:00:00'
  assert progress.eta(30, None) == '?' and not progress.due()
  clock[0] += 10
  assert progress.due()
  progress.logged()
  progress.mark(40)
  assert not progress.due() and progress.rate(40) is None


def test_evaluation_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
  def full_disk(path):
    raise OSError(errno.ENOSPC, 'No space left on device', path)

  result = {'per_frame': {'mse': [1.0]}, 'mean': {'mse': 1.0}, 'count': 1}
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.write_evaluation(7, result, result['mean'])
  path = tmp_path / 'eval' / 'step_000007.json'
  old = path.read_text()
  monkeypatch.setattr(outputs, '_fsync', full_disk)
  with pytest.raises(outputs.OutputError, match='disk is full.*step_000007'):
    writer.write_evaluation(7, dict(result, count=2), result['mean'])
  writer.close()
  assert path.read_text() == old
  assert os.listdir(tmp_path / 'eval') == ['step_000007.json']
