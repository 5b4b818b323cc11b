"""Converted reference checkpoints predict the authors' outputs (tests/vectors)."""
import argparse
import errno
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import mmnist
from stau_jax import convert_torch
from stau_jax import errors
from stau_jax import export
from stau_jax import models
from stau_jax import outputs
from tests import openstl_vectors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = sorted(
    path for path in glob.glob(os.path.join(os.path.dirname(__file__),
                                            'vectors', '*.npz'))
    if 'trajectory' not in path)  # forward passes; see train_trajectory_test


def load_vector(path):
  """Returns (config, state_dict, frames, sampling_mask, predictions)."""
  data = np.load(path)
  return (reference_config(data),) + openstl_vectors.reference_arrays(data)


def reference_config(data):
  """Our config of the authors' model a vector's 'config_json' describes."""
  reference = json.loads(str(data['config_json']))
  config = mmnist.get_config()
  config.model.update(
      cell=reference['model_name'], num_layers=reference['num_layers'],
      num_hidden=reference['num_hidden'][0],
      filter_size=reference['filter_size'][0], tau=reference['tau'],
      theta=reference['tau'],
      num_downsample=int(np.log2(reference['sr_size'])),
      patch_size=reference['patch_size'],
      residual=reference['cell_mode'] == 'residual',
      recall=reference['model_mode'] == 'recall')
  config.data.update(
      image_size=(reference['img_height'], reference['img_width']),
      channels=reference['img_channel'],
      input_length=reference['input_length'],
      total_length=reference['total_length'])
  return config


def test_vectors_cover_the_architectures_the_issue_lists():
  configs = [load_vector(path)[0] for path in VECTORS]
  covered = {(c.model.cell, c.model.residual, c.model.recall,
              c.model.patch_size, c.data.channels) for c in configs}
  assert {cell for cell, *_ in covered} == {'stau', 'mau'}
  assert {residual for _, residual, *_ in covered} == {False, True}
  assert {recall for _, _, recall, *_ in covered} == {False, True}
  assert {patch for *_, patch, _ in covered} == {1, 2}
  assert {channels for *_, channels in covered} == {1, 3}


@pytest.mark.parametrize('path', VECTORS, ids=os.path.basename)
def test_converted_checkpoint_predicts_the_reference_outputs(path):
  config, state_dict, frames, mask, expected = load_vector(path)
  params = convert_torch.convert_state_dict(state_dict, config)
  model = models.create_model(config)
  predictions = model.apply({'params': params}, frames, mask)
  np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-4)
  recorded, _ = models.predict_with_records(model, params, frames, mask)
  np.testing.assert_allclose(recorded, expected, rtol=0, atol=1e-4)


@pytest.fixture
def stau_vector():
  return load_vector(next(p for p in VECTORS if 'stau_basic' in p))


def test_missing_key_names_the_key_and_its_shape(stau_vector):
  config, state_dict, *_ = stau_vector
  del state_dict['cell_list.1.conv_s.1.weight']
  with pytest.raises(ValueError,
                     match=r"missing key 'cell_list.1.conv_s.1.weight' "
                     r'\(expected shape \(12, 4, 6\)\)'):
    convert_torch.convert_state_dict(state_dict, config)


def test_wrong_shape_names_the_key_and_both_shapes(stau_vector):
  config, state_dict, *_ = stau_vector
  state_dict['decoders.0.c_decoder0.weight'] = np.zeros((4, 4, 5, 5))
  with pytest.raises(ValueError, match=r"'decoders.0.c_decoder0.weight' has "
                     r'shape \(4, 4, 5, 5\) but .* expects \(4, 4, 3, 3\)'):
    convert_torch.convert_state_dict(state_dict, config)


def test_keys_of_a_deeper_model_are_an_error(stau_vector):
  config, state_dict, *_ = stau_vector
  config.model.num_layers = 2
  with pytest.raises(ValueError, match=r'keys the config.s model does not: '
                     r"\['cell_list.2.conv_s.0.bias'"):
    convert_torch.convert_state_dict(state_dict, config)


def test_non_finite_weights_are_refused(stau_vector):
  config, state_dict, *_ = stau_vector
  state_dict['srcnn.0.bias'] = np.full_like(state_dict['srcnn.0.bias'], np.nan)
  with pytest.raises(ValueError,
                     match=r"key 'srcnn.0.bias' holds NaN or inf"):
    convert_torch.convert_state_dict(state_dict, config)


def test_unused_reference_layers_and_data_parallel_prefix_are_accepted(
    stau_vector):
  config, state_dict, *_ = stau_vector
  assert {'merge.weight', 'conv_last_sr.weight'} <= state_dict.keys()
  wrapped = {f'module.{k}': v for k, v in state_dict.items()}
  params = convert_torch.convert_state_dict(wrapped, config)
  count = sum(v.size for k, v in state_dict.items()
              if not k.startswith(('merge.', 'conv_last_sr.')))
  assert count == sum(np.size(x) for x in jax.tree_util.tree_leaves(params))


def test_layer_norm_and_conv_layouts_are_transposed(stau_vector):
  config, state_dict, *_ = stau_vector
  params = convert_torch.convert_state_dict(state_dict, config)
  cells = params['unroll']['cells']['cell']
  # PyTorch LayerNorm weight (C, h, w) -> (h, w, C); conv OIHW -> HWIO.
  np.testing.assert_array_equal(
      cells['conv_t']['norm']['scale'][2],
      state_dict['cell_list.2.conv_t.1.weight'].transpose(1, 2, 0))
  np.testing.assert_array_equal(
      cells['conv_s_next']['conv']['kernel'][0],
      state_dict['cell_list.0.conv_s_next.0.weight'].transpose(2, 3, 1, 0))


def test_conversion_writes_an_export_file_that_predicts_like_the_reference(
    stau_vector, tmp_path, monkeypatch):
  config, state_dict, frames, mask, expected = stau_vector
  monkeypatch.setattr(convert_torch, 'load_torch_state_dict',
                      lambda path: state_dict if path == 'ref.ckpt' else None)
  output = str(tmp_path / 'stau.export')
  convert_torch.convert_checkpoint('ref.ckpt', config, output)
  params, loaded_config = export.load_export(output)
  assert loaded_config.model.to_dict() == config.model.to_dict()
  predictions = models.create_model(loaded_config).apply({'params': params},
                                                         frames, mask)
  np.testing.assert_allclose(predictions, expected, atol=1e-4)


def test_cli_without_torch_says_how_to_install_it(tmp_path):
  script = ("import sys; sys.modules['torch'] = None; "
            "from stau_jax import convert_torch; convert_torch.define_flags(); "
            "from absl import app; app.run(convert_torch.main)")
  result = subprocess.run(
      [sys.executable, '-c', script, '--checkpoint=model.ckpt-1',
       f'--output={tmp_path / "x.export"}', '--config=configs/tiny.py'],
      cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0
  assert 'pip install -e ".[torch]"' in result.stderr


def _torch_checkpoint(state_dict, layout):
  """`state_dict` (numpy) as the layouts convert_torch documents save it."""
  import torch  # pylint: disable=g-import-not-at-top
  dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(layout)
  tensors = {k: torch.from_numpy(np.array(v)).to(dtype or torch.float32)
             for k, v in state_dict.items()}
  if layout == 'authors':
    return {'net_param': tensors}
  if layout == 'lightning':
    return {'epoch': 3, 'global_step': 1200,
            'pytorch-lightning_version': '2.1.0',
            'state_dict': {f'model.{k}': v for k, v in tensors.items()},
            'optimizer_states': [{'state': {}, 'param_groups': [
                {'lr': 1e-3, 'params': list(range(len(tensors)))}]}],
            'lr_schedulers': [], 'hyper_parameters': {'lr': 1e-3}}
  if layout == 'data_parallel':
    return {f'module.{k}': v for k, v in tensors.items()}
  return tensors


@pytest.mark.parametrize('vector', [
    'stau_basic.npz', 'openstl/predrnn_gray_p4.npz', 'openstl/mim_rgb_p2.npz'])
@pytest.mark.parametrize('layout', ['authors', 'plain', 'lightning',
                                    'data_parallel', 'fp16', 'bf16'])
def test_every_documented_checkpoint_layout_converts(tmp_path, vector, layout):
  torch = pytest.importorskip('torch')
  path = os.path.join(os.path.dirname(__file__), 'vectors', vector)
  config, state_dict, *_ = (openstl_vectors.load(path) if 'openstl' in vector
                            else load_vector(path))
  checkpoint = str(tmp_path / 'model.ckpt')
  torch.save(_torch_checkpoint(state_dict, layout), checkpoint)
  output = str(tmp_path / 'model.export')
  convert_torch.convert_checkpoint(checkpoint, config, output)
  params, _ = export.load_export(output)
  # Half-precision files hold the rounded weights; convert those in float32.
  dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(layout)
  if dtype is not None:
    state_dict = {k: torch.from_numpy(np.array(v)).to(dtype).float().numpy()
                  for k, v in state_dict.items()}
  expected = convert_torch.convert_state_dict(state_dict, config)
  for (key, actual), value in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(actual, value, err_msg=str(key))


def test_checkpoint_with_python_objects_is_refused_unrun(tmp_path):
  torch = pytest.importorskip('torch')
  config, state_dict, *_ = load_vector(
      next(p for p in VECTORS if 'stau_basic' in p))
  path = str(tmp_path / 'model.ckpt')
  torch.save({'state_dict': {k: torch.from_numpy(np.array(v))
                             for k, v in state_dict.items()},
              'hyper_parameters': argparse.Namespace(lr=1e-3)}, path)
  with pytest.raises(errors.InputError,
                     match=r'Python object \(argparse.Namespace\).*never '
                     r'unpickles \(.*model.ckpt\): if you trust.*'
                     r'add_safe_globals\(\[argparse.Namespace\]\).*'
                     r'weights_only=True'):
    convert_torch.convert_checkpoint(path, config, str(tmp_path / 'x.export'))
  assert os.listdir(tmp_path) == ['model.ckpt']


def test_full_disk_names_the_export_and_keeps_the_old_one(tmp_path,
                                                          monkeypatch):
  torch = pytest.importorskip('torch')
  config, state_dict, *_ = load_vector(
      next(p for p in VECTORS if 'stau_basic' in p))
  checkpoint = str(tmp_path / 'model.ckpt')
  torch.save(_torch_checkpoint(state_dict, 'authors'), checkpoint)
  output = tmp_path / 'model.export'
  output.write_bytes(b'old')

  def full_disk(path):
    raise OSError(errno.ENOSPC, 'No space left on device', path)

  monkeypatch.setattr(outputs, '_fsync', full_disk)
  with pytest.raises(outputs.OutputError,
                     match=r'disk is full; nothing was written \(.*model.export'):
    convert_torch.convert_checkpoint(checkpoint, config, str(output))
  assert output.read_bytes() == b'old'
  assert sorted(os.listdir(tmp_path)) == ['model.ckpt', 'model.export']


def test_output_on_the_checkpoint_is_refused_before_reading_it(tmp_path):
  config = load_vector(next(p for p in VECTORS if 'stau_basic' in p))[0]
  checkpoint = tmp_path / 'model.ckpt'
  checkpoint.write_bytes(b'not read')
  with pytest.raises(outputs.OutputError, match='overwrite the input '
                     '--checkpoint'):
    convert_torch.convert_checkpoint(str(checkpoint), config, str(checkpoint))
  assert checkpoint.read_bytes() == b'not read'
