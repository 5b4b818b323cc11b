"""Tests of early action recognition: the classifier's shapes in the paper's
setting, learning on the Moving MNIST demo, exact resume, clear errors."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mmnist_action
from configs import sthsth_action
from stau_jax import checkpoints
from stau_jax import data
from stau_jax import export
from stau_jax import models
from stau_jax import recognize
from tests import data_video_test
from tests import runs

runs.enable_compilation_cache()


def _action_config(**overrides):
  """configs/tiny.py (16x16, 2 x 8 STAU) labelled by the demo's rule."""
  config = runs.tiny_config(**{
      'batch_size': 16, 'eval_batch_size': 50, 'num_eval_batches': -1,
      'learning_rate': 3e-3, 'lr_decay_start_step': 10**6, **overrides})
  config.data.total_length = 12
  config.data.num_test_sequences = 200
  config.classifier = ml_collections.ConfigDict(
      {'num_classes': 5, 'features': (16, 32)})
  return config


def _convlstm_config(**overrides):
  """`_action_config` with a 1-layer ConvLSTM predictor: any unit supplies
  features, and this one compiles fastest."""
  config = _action_config(**overrides)
  config.model.cell = 'convlstm'
  config.model.num_layers = 1
  return config


def _predictor_export(tmp_path, config):
  """An export of a predictor of `config` initialized from config.seed."""
  tmp_path.mkdir(exist_ok=True)
  path = str(tmp_path / 'predictor.export')
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(config.seed))
  export.save_export(path, params, config)
  return path


@pytest.mark.parametrize('input_length', [5, 10])
def test_paper_setting_shapes(input_length):
  config = sthsth_action.get_config()
  config.data.input_length = input_length
  features_fn = recognize.make_features_fn(config, models.create_model(config))
  frames = jax.ShapeDtypeStruct((2, 20, 128, 128, 3), jnp.float32)
  features, predictions = jax.eval_shape(features_fn,
                                         models.param_shapes(config), frames)
  assert features.shape == (2, 19, 16, 16, 64)  # C x T x H x W = 64x19x16x16
  assert predictions.shape == (2, 20 - input_length, 128, 128, 3)
  classifier = recognize.create_classifier(config)
  params = jax.eval_shape(lambda: classifier.init(
      jax.random.PRNGKey(0), jnp.zeros(features.shape))['params'])
  logits = jax.eval_shape(lambda p, x: classifier.apply({'params': p}, x),
                          params, features)
  assert logits.shape == (2, 174)


def test_baseline_sees_only_the_observed_frames():
  config = mmnist_action.get_config()
  features_fn = recognize.make_features_fn(config)
  frames = np.random.default_rng(0).random((2, 12, 32, 32, 1), np.float32)
  features, predictions = features_fn(None, frames)
  assert predictions is None
  assert features.shape == (2, 4, 8, 8, 16)  # 4 frames on the 8x8 grid
  changed = frames.copy()
  changed[:, 4:] = 0
  np.testing.assert_array_equal(features_fn(None, changed)[0], features)


def test_predictor_features_ignore_the_unseen_frames(tmp_path):
  config = _convlstm_config()
  config, params = recognize.with_predictor(
      config, _predictor_export(tmp_path, config))
  features_fn = jax.jit(recognize.make_features_fn(
      config, models.create_model(config)))
  frames = np.random.default_rng(0).random((2, 12, 16, 16, 1), np.float32)
  changed = frames.copy()
  changed[:, 4:] = 1 - changed[:, 4:]
  features, predictions = features_fn(params, frames)
  assert features.shape == (2, 11, 8, 8, 8) and predictions.shape == (
      2, 8, 16, 16, 1)
  np.testing.assert_array_equal(features_fn(params, changed)[0], features)


def test_tiny_baseline_learns_above_chance(tmp_path):
  config = _action_config(num_train_steps=100, eval_every_steps=100,
                          checkpoint_every_steps=100)
  config, _ = recognize.with_predictor(config, 'none')
  recognize.train_and_evaluate(config, str(tmp_path))
  result = json.loads((tmp_path / 'eval' / 'step_000100.json').read_text())
  labels = np.concatenate([b['labels'][b['valid']] for b in
                           data.load_labelled_test_set(config).batches(
                               config.eval_batch_size)])
  chance = np.bincount(labels).max() / len(labels)  # the majority class
  assert result['count'] == 200 and result['psnr'] is None
  assert result['top1'] > chance + 0.1, (result, chance)


def test_resume_is_exact(tmp_path):
  config = _action_config(num_train_steps=4, eval_every_steps=4,
                          checkpoint_every_steps=2, log_every_steps=2)
  config.data.num_test_sequences = 50
  config, _ = recognize.with_predictor(config, 'none')
  straight = recognize.train_and_evaluate(config, str(tmp_path / 'a'))
  config.num_train_steps = 2
  recognize.train_and_evaluate(config, str(tmp_path / 'b'))
  config.num_train_steps = 4
  resumed = recognize.train_and_evaluate(config, str(tmp_path / 'b'))
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight.params,
                         resumed.params)


def test_predictor_run_evaluates_and_refuses_another_predictor(tmp_path):
  config = _convlstm_config(num_train_steps=2, eval_every_steps=2,
                            checkpoint_every_steps=2, eval_batch_size=20)
  config.data.num_test_sequences = 20
  config, params = recognize.with_predictor(
      config, _predictor_export(tmp_path, config))
  recognize.train_and_evaluate(config, str(tmp_path / 'run'), params)
  step, result = recognize.evaluate_run(config, str(tmp_path / 'run'), params)
  written = json.loads((tmp_path / 'run' / 'eval' / 'step_000002.json')
                       .read_text())
  assert step == 2 and written == {'step': 2, **result}
  assert result['count'] == 20 and 5 < result['psnr'] < 30

  other = _convlstm_config()
  other.seed = 7  # same architecture, other parameters
  path = _predictor_export(tmp_path / 'other', other)
  other, other_params = recognize.with_predictor(config, path)
  with pytest.raises(checkpoints.CheckpointError, match='predictor_sha256'):
    recognize.evaluate_run(other, str(tmp_path / 'run'), other_params)


def test_label_ids_out_of_range_are_named(tmp_path):
  config = data_video_test._sthsth(tmp_path)  # labels 7 and 3
  config.classifier = sthsth_action.get_config().classifier
  config.classifier.num_classes = 5
  batches = recognize.check_labels(
      data.create_labelled_train_iterator(config, num_devices=1), 5,
      'Training')
  with pytest.raises(ValueError, match=r'label id 7, outside \[0, 5\)'):
    next(batches)


def test_wrong_label_files_are_named(tmp_path):
  config = data_video_test._sthsth(tmp_path)
  config.classifier = sthsth_action.get_config().classifier
  (tmp_path / 'train.json').write_text(json.dumps({'100': 'Pushing'}))
  with pytest.raises(ValueError, match=r'train.json: expected a list of'):
    next(data.create_labelled_train_iterator(config, num_devices=1))


@pytest.mark.parametrize('change, match', [
    (dict(input_length=12, test_total_length=13),
     r'input_length < config.data.total_length; got '
     r'input_length=12, total_length=12'),
    (dict(test_total_length=4), r'test_total_length=4 must be larger than '
                                r'input_length=4'),
    (dict(test_set='official', image_size=(64, 64)),
     'labelled Moving MNIST needs'),
])
def test_videos_too_short_or_without_labels_are_named(change, match):
  config = _action_config()
  config.data.update(change)
  with pytest.raises(ValueError, match=match):
    recognize.validate_config(config, 1, 1)


def test_config_and_predictor_mismatches_are_named(tmp_path):
  config = _action_config()
  config.classifier.num_classes = 7
  with pytest.raises(ValueError, match='labels of moving_mnist have 5'):
    recognize.validate_config(config, 1, 1)
  predictor = _predictor_export(tmp_path, _action_config())
  config = _action_config()
  config.data.image_size = (32, 32)
  with pytest.raises(ValueError, match=r'trained on data.image_size = '
                                       r'\[16, 16\]'):
    recognize.with_predictor(config, predictor)


def test_cli_trains_and_refuses_a_missing_predictor(tmp_path):
  args = ('-m', 'stau_jax.recognize', '--config=configs/mmnist_action.py',
          f'--workdir={tmp_path}', '--config.num_train_steps=2',
          '--config.eval_every_steps=2', '--config.data.num_test_sequences=50')
  result = runs.python(*args, '--predictor=none')
  assert 'step 2/2 | loss' in result.stderr and 'accuracy' in result.stderr
  assert 'Evaluation at step 2 on 50 test clips: top-1' in result.stderr
  assert 'orbax' not in result.stderr
  result = runs.python(*args, '--predictor=none', '--evaluate_only')
  assert json.loads(result.stdout.splitlines()[-1])['step'] == 2
  result = runs.python(*args, '--predictor=missing.export', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: The export file does not exist (missing.export): check the '
      'path (python -m stau_jax.export writes one)')
  assert os.listdir(tmp_path / 'eval') == ['step_000002.json']
