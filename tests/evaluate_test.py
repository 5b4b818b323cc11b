"""Tests of evaluation: metrics against a direct computation, and the CLI."""
import hashlib
import json

import jax
import numpy as np
import pytest

from configs import kitti
from stau_jax import data
from stau_jax import distributed
from stau_jax import errors
from stau_jax import evaluate
from stau_jax import export
from stau_jax import metrics
from stau_jax import models
from stau_jax import perceptual
from stau_jax import train
from tests import export_test
from tests import runs

runs.enable_compilation_cache()


def test_evaluate_matches_a_direct_computation():
  config = runs.tiny_config()
  params = jax.tree_util.tree_map(lambda x: 0.1 * x,
                                  export_test.random_params(config))
  result = evaluate.evaluate_params(params, config)
  frames = runs.test_arrays(config)
  assert result['count'] == len(frames) == 32
  predictions = models.create_model(config).apply({'params': params}, frames)
  expected = metrics.compute_metrics(
      predictions[:, config.data.input_length - 1:],
      frames[:, config.data.input_length:])
  for name in metrics.DEFAULT_METRICS:
    np.testing.assert_allclose(result['per_frame'][name],
                               np.mean(expected[name], axis=0), rtol=1e-4,
                               err_msg=name)
  digest = hashlib.sha256(np.round(frames * 255).astype(np.uint8).tobytes())
  assert result['test_set'] == {
      'dataset': 'moving_mnist', 'source': 'generated from bundled held-out '
      'digits', 'num_sequences': 32, 'seed': 1234,
      'digest': 'sha256:' + digest.hexdigest()}


def test_lpips_and_fvd_match_a_direct_computation():
  """32x32 frames, 2 -> 9 frames, 3 sequences in 2 batches (one padded)."""
  config = runs.tiny_config(eval_metrics='mse,lpips,fvd', eval_batch_size=2)
  config.data.image_size = (32, 32)
  config.data.input_length = 2
  config.data.total_length = 11
  config.data.num_test_sequences = 3
  params = export_test.random_params(config)
  result = evaluate.evaluate_params(params, config)
  frames = runs.test_arrays(config)
  predictions = models.create_model(config).apply({'params': params}, frames)
  predictions = np.clip(predictions[:, 1:], 0, 1)
  np.testing.assert_allclose(
      result['per_frame']['lpips'],
      np.mean(perceptual.lpips(predictions, frames[:, 2:]), axis=0),
      rtol=1e-4)
  features = perceptual.fvd_features(
      np.concatenate([frames[:, 2:], predictions]))
  expected = perceptual.frechet_distance(features[:3], features[3:])
  assert result['count'] == 3 and list(result['per_frame']) == ['mse', 'lpips']
  np.testing.assert_allclose(result['mean']['fvd'], expected, rtol=1e-3)


@pytest.mark.parametrize('metric_names, overrides, message', (
    ('mse,fid', {}, 'Bad metric list'),
    ('lpips', {}, 'LPIPS needs frames of at least 31x31'),
    ('fvd', {}, 'FVD needs clips of at least 9 frames'),
    ('fvd', {'total_length': 13, 'num_test_sequences': 1},
     'fvd needs at least 2 test clips; this evaluation has 1: the test set '
     'has only 1; use a larger one or leave fvd out of config.eval_metrics'),
))
def test_bad_metric_choices_are_errors_before_any_work(metric_names,
                                                       overrides, message):
  config = runs.tiny_config(eval_metrics=metric_names)
  config.data.update(overrides)
  with pytest.raises(ValueError, match=message):
    evaluate.validate_eval_config(config)
  with pytest.raises(ValueError, match=message):
    train.validate_config(config, num_devices=1, process_count=1)


@pytest.mark.parametrize('baseline', evaluate.BASELINES)
def test_baselines_score_naive_predictions(baseline):
  config = runs.tiny_config()
  frames = runs.test_arrays(config)
  future = frames[:, config.data.input_length:]
  naive = (np.zeros_like(future) if baseline == 'zeros' else np.repeat(
      frames[:, config.data.input_length - 1:config.data.input_length],
      future.shape[1], axis=1))
  result = evaluate.evaluate_params(export_test.random_params(config), config,
                                    baseline=baseline)
  np.testing.assert_allclose(
      result['per_frame']['mse'],
      np.square(future - naive).sum(axis=(2, 3, 4)).mean(axis=0), rtol=1e-5)


def test_unknown_baseline_is_an_error():
  with pytest.raises(ValueError, match='Unknown baseline'):
    evaluate.baseline_predictions('mean', np.zeros((1, 8, 4, 4, 1)), 4)


def test_samples_and_batch_limit():
  config = runs.tiny_config()
  params = export_test.random_params(config)
  eval_step = evaluate.make_eval_step(models.create_model(config), config)
  result, samples = evaluate.evaluate(
      eval_step, distributed.replicate(params),
      data.create_test_iterator(config), num_batches=1, num_samples=3)
  assert result['count'] == config.eval_batch_size
  assert samples['frames'].shape == (3, 8, 16, 16, 1)
  assert samples['predictions'].shape == (3, 4, 16, 16, 1)
  assert 0 <= samples['predictions'].min() <= samples['predictions'].max() <= 1


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('evaluate') / 'tiny.export')
  config = runs.tiny_config()
  export.save_export(path, export_test.random_params(config), config)
  return path


def test_fvd_limited_by_the_batches_says_to_raise_them():
  config = runs.tiny_config(eval_metrics='fvd', num_eval_batches=1,
                            eval_batch_size=1)
  config.data.total_length = 13
  with pytest.raises(ValueError, match='this evaluation has 1: raise '
                     'config.num_eval_batches or config.eval_batch_size'):
    evaluate.validate_eval_config(config)


def test_evaluate_export_validates_builds_and_opens_once(tmp_path,
                                                         monkeypatch):
  config = runs.tiny_config(num_eval_batches=1)
  config.data.test_set = str(tmp_path / 'test.npy')
  config.data.image_size = (64, 64)
  config.model.num_downsample = 2
  np.save(config.data.test_set, np.zeros((20, 3, 64, 64), np.uint8))
  path = str(tmp_path / 'model.export')
  export.save_export(path, export_test.random_params(config), config)
  calls = {'validate': 0, 'build': 0, 'open': 0}

  def counted(name, function):
    def wrapper(*args, **kwargs):
      calls[name] += 1
      return function(*args, **kwargs)
    return wrapper

  from stau_jax.data import moving_mnist  # pylint: disable=g-import-not-at-top
  from stau_jax.models import predictor  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(models, 'validate_model_config', counted(
      'validate', models.validate_model_config))
  monkeypatch.setattr(predictor, 'create_model', counted(
      'build', predictor.create_model))
  monkeypatch.setattr(moving_mnist, 'load_official_npy', counted(
      'open', moving_mnist.load_official_npy))
  result = evaluate.evaluate_export(path, {'eval_batch_size': 2})
  assert result['count'] == 2
  assert calls == {'validate': 1, 'build': 1, 'open': 1}


def test_zero_batches_is_refused_up_front():
  config = runs.tiny_config()
  with pytest.raises(ValueError, match='num_eval_batches must be a positive'):
    evaluate.evaluate_params(export_test.random_params(config), config,
                             num_batches=0)


def test_cli_prints_the_table_and_writes_json(tiny_export, tmp_path):
  output = str(tmp_path / 'metrics.json')
  result = runs.python('-m', 'stau_jax.evaluate', f'--export={tiny_export}',
                       '--config.num_eval_batches=1',
                       '--config.eval_batch_size=4', f'--output={output}',
                       '--config.model.conv_impl=xla')  # how, not what
  assert 'mean' in result.stdout and 'ssim_dr1' in result.stdout
  with open(output) as f:
    written = json.load(f)
  assert written['count'] == 4
  assert len(written['per_frame']['mse']) == 4
  baseline = runs.python('-m', 'stau_jax.evaluate', f'--export={tiny_export}',
                         '--config.num_eval_batches=1',
                         '--config.eval_batch_size=4', '--baseline=zeros',
                         '--config.eval_metrics=psnr,mae')
  assert "Baseline 'zeros'" in baseline.stdout
  assert baseline.stdout.splitlines()[1].split() == ['frame', 'mae', 'psnr']


def test_cli_on_a_full_disk_keeps_the_old_metrics(tiny_export, tmp_path):
  output = tmp_path / 'metrics.json'
  output.write_text('{"old": 1}')
  result = runs.python_on_full_disk(
      'stau_jax.evaluate', f'--export={tiny_export}',
      '--config.num_eval_batches=1', '--config.eval_batch_size=4',
      '--config.eval_metrics=mse', f'--output={output}')
  runs.assert_full_disk_error(result, str(output), tmp_path, b'{"old": 1}')


@pytest.mark.parametrize('output, message', [
    ('.', 'error: --output=. is a directory: name a file to write'),
    ('missing/m.json', 'error: The folder of --output=missing/m.json does not '
     'exist'),
    ('tiny.export', 'error: --output=tiny.export would overwrite the input '
     '--export'),
])
def test_cli_refuses_a_bad_output_before_reading_the_export(tmp_path, output,
                                                            message):
  (tmp_path / 'tiny.export').write_bytes(b'not read')
  result = runs.python('-m', 'stau_jax.evaluate', '--export=tiny.export',
                       f'--output={output}', cwd=tmp_path, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message)


def test_cli_reads_an_official_layout_npy(tmp_path):
  config = runs.tiny_config()
  config.data.image_size = (64, 64)
  config.model.num_downsample = 2
  path = str(tmp_path / 'mmnist64.export')
  export.save_export(path, export_test.random_params(config), config)
  sequences = np.random.default_rng(0).integers(0, 256, (20, 3, 64, 64),
                                                dtype=np.uint8)
  np.save(tmp_path / 'test.npy', sequences)
  output = str(tmp_path / 'metrics.json')
  runs.python('-m', 'stau_jax.evaluate', f'--export={path}',
              f'--data={tmp_path / "test.npy"}', f'--output={output}')
  with open(output) as f:
    assert json.load(f)['count'] == 3


def test_overrides_set_fields_of_the_exports_config():
  config = runs.tiny_config()
  evaluate.apply_overrides(config, {'data.test_set': 'official',
                                    'eval_batch_size': 2})
  assert (config.data.test_set, config.eval_batch_size) == ('official', 2)


def test_moving_mnist_test_set_override_of_a_video_export_is_refused():
  config = kitti.get_config()
  with pytest.raises(errors.InputError,
                     match=r"config.data.test_set chooses a Moving MNIST .*"
                     r"'kitti'.*--config.data.data_dir"):
    evaluate.apply_overrides(config, {'data.test_set': 'test.npy'})
  evaluate.apply_overrides(config, {'data.data_dir': 'elsewhere'})
  assert config.data.data_dir == 'elsewhere' and 'test_set' not in config.data


def test_cli_rejects_a_corrupt_export(tmp_path):
  path = tmp_path / 'bad.export'
  path.write_bytes(b'not an export')
  result = runs.python('-m', 'stau_jax.evaluate', f'--export={path}',
                       check=False)
  assert result.returncode != 0
  assert 'not a readable stau_jax export file' in result.stderr
