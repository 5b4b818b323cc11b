"""Tests of the experiment configs in configs/: each builds and validates,
and each holds only its own dataset's fields."""
import glob
import importlib
import os

from PIL import Image
import pytest

from configs import base
from configs import kitti
from configs import mmnist_action
from configs import tiny
from stau_jax import checkpoints
from stau_jax import train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'configs')
EXPERIMENTS = sorted(
    os.path.basename(path)[:-3]
    for path in glob.glob(os.path.join(CONFIG_DIR, '*.py'))
    if not os.path.basename(path).startswith('_') and
    os.path.basename(path) != 'base.py')
VIDEO_EXPERIMENTS = ('kitti', 'sthsth', 'sthsth_action', 'towncentre')
OWN_DATA_EXPERIMENTS = ('video_folder',)
# configs/mmnist.py's data fields that only the Moving MNIST pipeline reads.
MOVING_MNIST_FIELDS = ('num_digits', 'digits', 'test_set',
                       'num_test_sequences', 'test_seed')
# A real-video config's input files, created empty so validation finds them.
PATH_FIELDS = ('train_path', 'train_sources', 'test_path', 'test_sources',
               'video_path', 'train_labels', 'test_labels', 'label_map')


def _get_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def test_every_experiment_is_listed():
  assert EXPERIMENTS == ['kitti', 'mmnist', 'mmnist_action', 'sthsth',
                         'sthsth_action', 'tiny', 'towncentre', 'video_folder']
  assert not hasattr(base, 'get_config')  # a helper, not an experiment


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_experiment_builds_and_validates(name, tmp_path):
  config = _get_config(name)
  assert config.name == name
  if config.data.dataset != 'moving_mnist':
    for field in PATH_FIELDS:
      if config.data.get(field):
        (tmp_path / config.data[field]).touch()
    config.data.data_dir = str(tmp_path)
  if config.data.dataset == 'video_folder':  # Two clips of one frame.
    for clip in ('a', 'b'):
      (tmp_path / clip).mkdir()
      Image.new('RGB', (8, 8)).save(tmp_path / clip / '0.png')
  train.validate_config(config, num_devices=1, process_count=1)


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_only_moving_mnist_has_moving_mnist_fields(name):
  data = _get_config(name).data
  present = [field for field in MOVING_MNIST_FIELDS if field in data]
  if name in VIDEO_EXPERIMENTS + OWN_DATA_EXPERIMENTS:
    assert data.dataset != 'moving_mnist' and present == []
  else:
    assert data.dataset == 'moving_mnist'
    assert present == list(MOVING_MNIST_FIELDS)


@pytest.mark.parametrize('name', VIDEO_EXPERIMENTS)
def test_video_experiments_use_the_papers_real_video_stau(name):
  config = _get_config(name)
  assert (config.model.num_layers, config.model.num_hidden,
          config.model.filter_size, config.model.tau, config.model.theta,
          config.model.residual, config.data.channels) == (16, 64, 5, 5, 5,
                                                           True, 3)


@pytest.mark.parametrize('module, model, data, run', [
    (tiny, (2, 8, 3, 2, 2, 1), ((16, 16), 4, 8, 1, 'bundled', 32),
     dict(batch_size=4, eval_batch_size=8, num_train_steps=40,
          sampling_changing_rate=0.02, r_exp_alpha=5, log_every_steps=10,
          num_eval_batches=2)),
    (mmnist_action, (2, 16, 3, 3, 3, 2), ((32, 32), 4, 12, 1, 'bundled', 500),
     dict(batch_size=16, eval_batch_size=50, num_train_steps=1000,
          sampling_changing_rate=2e-3, r_exp_alpha=5000, log_every_steps=100,
          num_eval_batches=-1)),
])
def test_tiny_and_mmnist_action_values(module, model, data, run):
  """(layers, hidden, filter, tau, theta, downsampling), (image size, input
  and total length, digits, digit source, test sequences), training fields."""
  config = module.get_config()
  assert (config.model.num_layers, config.model.num_hidden,
          config.model.filter_size, config.model.tau, config.model.theta,
          config.model.num_downsample) == model
  assert (tuple(config.data.image_size), config.data.input_length,
          config.data.total_length, config.data.num_digits,
          config.data.digits, config.data.num_test_sequences) == data
  assert {name: config[name] for name in run} == run


def test_old_video_run_with_moving_mnist_fields_still_resumes():
  """Run dirs written before the split hold Moving MNIST's fields."""
  saved, current = kitti.get_config(), kitti.get_config()
  saved.data.update(num_digits=2, digits='auto', test_set='generated',
                    num_test_sequences=10000, test_seed=1234)
  checkpoints.check_compatible(saved, current, 'runs/kitti')
  assert [name for name, _, now in checkpoints.changed_fields(saved, current)
          if now is None] == sorted(
              f'data.{field}' for field in MOVING_MNIST_FIELDS)
