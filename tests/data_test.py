"""Tests of the dataset registry (stau_jax/data/__init__.py)."""
import types

import numpy as np
import pytest

from configs import kitti
from configs import tiny
from stau_jax import data
from stau_jax.data import pipeline


def test_every_dataset_provides_the_interface():
  for name, module in data.DATASETS.items():
    for member in ('validate', 'train_batches', 'test_set'):
      assert callable(getattr(module, member, None)), (name, member)
  assert data.labelled_datasets() == ('moving_mnist', 'sthsth')


def _constant_dataset():
  """A dataset module of sequences filled with their index / 10."""
  def sequences(count, config):
    shape = (config.data.total_length,) + tuple(config.data.image_size) + (1,)
    return np.stack([np.full(shape, i / 10, np.float32) for i in range(count)])

  def train_batches(config, *, seed, num_devices, start_step=0,
                    process_index=0, process_count=1, labelled=False):
    del seed, process_index, process_count, labelled
    while True:
      yield pipeline.split_for_devices(
          sequences(config.batch_size, config) + start_step, num_devices)

  return types.SimpleNamespace(
      validate=lambda config: None, train_batches=train_batches,
      test_set=lambda config, labelled=False: pipeline.TestSet(
          3, lambda: iter([{'frames': sequences(3, config)}]), source='made'))


def test_a_registered_module_is_a_dataset(monkeypatch):
  monkeypatch.setitem(data.DATASETS, 'constant', _constant_dataset())
  config = tiny.get_config()
  config.data.dataset = 'constant'
  data.validate_data_config(config, num_devices=1)
  batch = next(data.create_train_iterator(config, num_devices=2))
  assert batch.shape == (2, 2, 8, 16, 16, 1)
  test_set = data.load_test_set(config)
  digest = data.new_digest()
  (first,) = list(test_set.batches(4, digest))
  assert first['valid'].tolist() == [True, True, True, False]
  identity = data.test_set_identity(config, test_set, digest, 3)
  assert identity['dataset'] == 'constant' and identity['source'] == 'made'
  assert identity['digest'].startswith('sha256:')
  with pytest.raises(ValueError, match=r"dataset='constant' has no action "
                     r"labels; use one of \('moving_mnist', 'sthsth'\)"):
    data.num_label_classes(config)
  assert data.resume_conflict(config, config) is None


def test_an_unknown_dataset_is_named():
  config = kitti.get_config()
  config.data.dataset = 'ucf101'
  with pytest.raises(ValueError, match=r"dataset='ucf101' is not one of "
                     r"\('moving_mnist', 'kitti', 'towncentre', 'sthsth', "
                     r"'video_folder'\)"):
    data.validate_data_config(config, num_devices=1)
