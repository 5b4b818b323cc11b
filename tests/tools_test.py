"""Tests for tools/: the authors'-model timer, the GPU side-by-side script, the street video,
the README's picture."""
import gzip
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest

from configs import tiny
from stau_jax import models
from stau_jax import pictures
from stau_jax import train
from stau_jax import visualize
from tests import runs
from tools import profile_summary
from tools import readme_picture
from tools import torch_reference_step
from tools import walking_people

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_checkout(root, model_source='RNN = None\n'):
  """A directory laid out like the authors' repository (core/models/STAU.py)."""
  models_dir = root / 'core' / 'models'
  models_dir.mkdir(parents=True)
  (root / 'core' / '__init__.py').write_text('')
  (models_dir / '__init__.py').write_text('')
  (models_dir / 'STAU.py').write_text(model_source)
  return str(root)


def test_median_seconds_warms_up_once_and_syncs_every_call():
  calls, syncs = [], []
  seconds = torch_reference_step.median_seconds(
      lambda: calls.append(1), 4, lambda: syncs.append(1))
  assert len(calls) == 5 and len(syncs) == 5
  assert 0 <= seconds < 1


def test_a_directory_that_is_not_the_authors_repository_is_a_clear_error(
    tmp_path):
  with pytest.raises(SystemExit, match='not a checkout of the authors'):
    torch_reference_step.main([f'--reference={tmp_path}'])


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(SystemExit, match=r'needs PyTorch: pip install'):
    torch_reference_step.main([f'--reference={_fake_checkout(tmp_path)}'])


_TINY_RNN = textwrap.dedent('''
    import torch
    from torch import nn

    class RNN(nn.Module):
      """Stands in for the authors' model: same constructor and call."""

      def __init__(self, num_layers, num_hidden, configs):
        super().__init__()
        assert (num_layers, num_hidden, configs.tau) == (4, [64] * 4, 5)
        self.scale = nn.Parameter(torch.ones(()))

      def forward(self, frames, mask):
        assert mask.shape[1:] == (9, 64, 64, 1)
        return frames[:, :-1] * self.scale
    ''')


def test_times_the_model_of_a_checkout(tmp_path):
  pytest.importorskip('torch')
  reference = _fake_checkout(tmp_path, _TINY_RNN)
  # Its own process: importing torch where JAX already runs can crash the
  # process (a segfault in triton's import under pytest-xdist).
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'tools', 'torch_reference_step.py'),
       f'--reference={reference}', '--batch_size=2', '--steps=2',
       '--autocast=bf16'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  assert stats['params'] == 1 and stats['batch_size'] == 2
  assert stats['autocast'] == 'bf16' and stats['train_step_s'] > 0


def test_gpu_side_by_side_runs_both_models_in_both_precisions(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.txt'
  (bin_dir / 'nvidia-smi').write_text('#!/bin/sh\necho "name\nFake GPU"\n')
  # A fake python3 that records its arguments and prints a result line.
  (bin_dir / 'python3').write_text(
      f'#!/bin/sh\necho "$*" >> {log}\n'
      'echo "{\\"train_step_s\\": 0.05, \\"args\\": \\"$*\\"}"\n')
  for tool in bin_dir.iterdir():
    tool.chmod(0o755)
  out = tmp_path / 'out'
  result = subprocess.run(
      ['bash', os.path.join(REPO, 'tools', 'gpu_side_by_side.sh'), '/ref',
       str(out), '16'], cwd=REPO, capture_output=True, text=True, timeout=60,
      env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}'))
  assert result.returncode == 0, result.stderr
  calls = log.read_text().splitlines()
  assert len(calls) == 4
  jax_f32, jax_bf16, torch_f32, torch_bf16 = calls
  assert jax_f32.startswith('-m stau_jax.benchmark --config=configs/mmnist.py')
  assert '--config.batch_size=16' in jax_f32 and 'half_precision' not in jax_f32
  assert '--config.half_precision=True' in jax_bf16
  assert 'tools/torch_reference_step.py --reference=/ref --device=cuda' in (
      torch_f32) and 'autocast' not in torch_f32
  assert '--autocast=bf16' in torch_bf16 and '--batch_size=16' in torch_bf16
  summary = (out / 'summary.txt').read_text().splitlines()
  assert [line.split()[0] for line in summary] == [
      'jax_f32', 'jax_bf16', 'torch_f32', 'torch_bf16']
  assert json.loads((out / 'jax_bf16.json').read_text())['train_step_s'] == 0.05


def test_walking_people_writes_frames_and_the_last_frames_as_clips(tmp_path):
  walking_people.main([f'--output={tmp_path}', '--num_frames=60', '--size=32',
                       '--clip_length=4', '--num_clips=3'])
  names = sorted(os.listdir(tmp_path / 'frames'))
  assert len(names) == 60 and names[0] == '000000.png'
  clips = np.load(tmp_path / 'clips.npy')
  assert clips.shape == (3, 4, 32, 32, 3) and clips.dtype == np.uint8
  frames = list(walking_people.street_frames(60, size=32))
  np.testing.assert_array_equal(clips.reshape(12, 32, 32, 3), frames[48:])
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / 'frames' / '000059.png')), frames[59])
  assert len({frame.tobytes() for frame in frames}) > 10  # people walk by
  with pytest.raises(SystemExit):
    walking_people.main([f'--output={tmp_path}', '--num_frames=10',
                         '--clip_length=4', '--num_clips=3'])


def test_readme_picture_config_is_a_valid_cpu_run():
  config = readme_picture.picture_config()
  train.validate_config(config, num_devices=1, process_count=1)
  assert config.data.digits == 'bundled'  # offline
  assert config.data.image_size == (32, 32) and config.model.num_layers == 2


def test_readme_picture_is_the_strip_above_the_attention_maps():
  config = tiny.get_config()
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  frames = runs.test_arrays(config)[0]
  image = readme_picture.draw(params, config, frames)
  predictions = visualize.collect_records(params, config,
                                          frames)['predictions']
  strip = pictures.frame_strip(frames[:4], frames[4:8], predictions,
                               scale=4, labels=True)  # 16 -> 64 pixels
  assert image.dtype == np.uint8 and image.shape[2] == 3
  left = (image.shape[1] - strip.shape[1]) // 2
  np.testing.assert_array_equal(
      image[:strip.shape[0], left:left + strip.shape[1]],
      np.repeat(strip, 3, axis=-1))
  maps = image[strip.shape[0] + 8:]
  assert maps.shape[0] > 100 and (maps < 255).any(axis=-1).mean() > 0.1


def test_readme_picture_trains_draws_and_reuses_a_finished_run(tmp_path):
  args = ('-m', 'tools.readme_picture', f'--config={runs.TINY_CONFIG}',
          '--config.num_train_steps=2', '--config.eval_every_steps=2',
          '--config.num_eval_batches=1', f'--workdir={tmp_path / "run"}',
          f'--output={tmp_path / "picture.png"}', '--index=1')
  first = runs.python(*args)
  assert 'step 2/2' in first.stderr
  assert f'Wrote {tmp_path / "picture.png"}' in first.stdout
  picture = np.asarray(Image.open(tmp_path / 'picture.png'))
  assert picture.ndim == 3 and picture.shape[2] == 3
  again = runs.python(*args)
  assert 'step 1/2' not in again.stderr  # nothing left to train
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / 'picture.png')), picture)


@pytest.mark.parametrize('flags, message', [
    (['--output=picture.jpg'], 'must end with .png'),
    (['--output=picture.png', '--index=32'], 'outside the 32 test sequences'),
    ([], 'The folder of --output=docs/stau_prediction.png does not exist'),
])
def test_readme_picture_refuses_bad_flags_before_training(tmp_path, flags,
                                                          message):
  result = runs.python('-m', 'tools.readme_picture',
                       f'--config={runs.TINY_CONFIG}',
                       f'--workdir={tmp_path / "run"}', *flags, cwd=tmp_path,
                       check=False)
  assert result.returncode == 1 and message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def _trace(path, events):
  """A perfetto_trace.json.gz as jax.profiler writes it: two XLA worker
  threads, the host thread's block_until_ready calls, op events (us)."""
  names = [(1, 'tf_XLAEigen/1'), (2, 'tf_XLAEigen/2'), (3, 'python')]
  trace = [{'ph': 'M', 'name': 'thread_name', 'pid': 1, 'tid': tid,
            'args': {'name': name}} for tid, name in names]
  trace += [{'ph': 'X', 'pid': 1, 'tid': tid, 'name': name, 'dur': dur}
            for tid, name, dur in events]
  os.makedirs(path)
  with gzip.open(os.path.join(path, 'perfetto_trace.json.gz'), 'wt') as f:
    json.dump({'traceEvents': trace}, f)


def test_profile_summary_sums_op_kinds_per_step_without_containers(tmp_path):
  _trace(str(tmp_path / 'plugins' / 'run'), [
      (3, 'api.py:1 block_until_ready', 2_000_000),  # 2 steps of 1 s
      (1, 'ThunkExecutor::Execute', 1_500_000),  # holds the ops below
      (1, 'while.3', 1_400_000),
      (1, 'dot_general.12', 600_000), (2, 'ynn_fusion', 200_000),
      (1, 'wrapped_broadcast.4', 300_000), (2, 'copy_bitcast_fusion', 100_000),
      (2, 'add_multiply_fusion.7', 200_000), (1, 'ffi_call.3', 100_000)])
  result = profile_summary.summarize(str(tmp_path), steps=2)
  assert result['step_s'] == pytest.approx(1.0)
  assert result['threads'] == 2
  kinds = {kind: round(seconds, 6) for kind, (seconds, _) in
           result['kinds'].items()}
  assert kinds == {'matmul / conv': 0.4, 'zero-fill broadcasts': 0.15,
                   'copies / transposes': 0.05, 'elementwise fusions': 0.1,
                   'oneDNN convolutions': 0.05}
  assert result['busy'] == pytest.approx(0.75 / 2)


def test_profile_summary_without_a_trace_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'tools/profile_summary.py', str(tmp_path)],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert result.stderr.strip() == (
      f'error: no perfetto_trace.json.gz under {tmp_path}')
