"""Tests for stau_jax.upgrade: configs of older versions read as current ones."""
import json

import ml_collections
import numpy as np
import pytest

from configs import kitti
from configs import mmnist
from configs import tiny
from stau_jax import checkpoints
from stau_jax import export
from stau_jax import models
from stau_jax import upgrade
from tests import export_test


def _older(config):
  """`config` as a version before every ADDED_FIELDS field wrote it."""
  fields = json.loads(config.to_json())
  for path in upgrade.ADDED_FIELDS:
    *parents, name = path.split('.')
    section = fields
    for key in parents:
      section = section[key]
    del section[name]
  for name in upgrade.ADDED_DATASET_FIELDS.get(fields['data']['dataset'], ()):
    del fields['data'][name]
  return ml_collections.ConfigDict(fields)


def test_older_config_gets_what_it_behaved_as_and_a_current_one_is_kept():
  current = mmnist.get_config()  # the defaults of every added field
  older = _older(current)
  upgraded = upgrade.upgrade_config(older)
  assert json.loads(upgraded.to_json()) == json.loads(current.to_json())
  assert 'frontend' not in older.model  # a copy: the input is unchanged
  assert 'test_seed' not in older.data and upgraded.data.test_seed == 1234
  current.model.frontend = 'patch'
  current.keep_checkpoints = 7
  assert upgrade.upgrade_config(current).model.frontend == 'patch'
  assert upgrade.upgrade_config(current).keep_checkpoints == 7


def test_dataset_fields_go_to_their_dataset_only():
  upgraded = upgrade.upgrade_config(_older(kitti.get_config()))
  assert 'test_seed' not in upgraded.data
  assert upgraded.data.center_crop is True and upgraded.data.data_dir == ''


def test_missing_sections_stay_missing():
  upgraded = upgrade.upgrade_config(ml_collections.ConfigDict({'seed': 1}))
  assert 'model' not in upgraded and upgraded.seed == 1


def test_an_older_run_config_resumes_and_an_architecture_change_is_refused(
    tmp_path):
  (tmp_path / 'config.json').write_text(_older(tiny.get_config()).to_json())
  saved = checkpoints.read_config(str(tmp_path))
  assert saved.model.frontend == 'stau' and saved.keep_checkpoints == 3
  checkpoints.check_compatible(saved, tiny.get_config(), 'runs/x')
  current = tiny.get_config()
  current.model.layer_norm = True
  with pytest.raises(checkpoints.CheckpointError,
                     match='config.model.layer_norm = False'):
    checkpoints.check_compatible(saved, current, 'runs/x')


def test_an_older_export_loads_and_builds_its_model(tmp_path):
  config = tiny.get_config()
  params = export_test.random_params(config)
  path = str(tmp_path / 'old.export')
  export.save_export(path, params, _older(config))
  loaded, loaded_config = export.load_export(path)
  assert loaded_config.model.frontend == 'stau'
  assert loaded_config.eval_metrics == 'mse,mae,psnr,ssim,ssim_dr1'
  frames = np.zeros((1, 8, 16, 16, 1), np.float32)
  assert models.create_model(loaded_config).apply(
      {'params': loaded}, frames).shape == (1, 7, 16, 16, 1)
