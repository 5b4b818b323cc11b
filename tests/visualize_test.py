"""Tests of the pictures of what units record and of the visualize CLI."""
import os

import numpy as np
import pytest
from PIL import Image

from stau_jax import pictures
from stau_jax import visualize


@pytest.fixture(scope='module')
def tiny_model():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from stau_jax import models  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model.theta = 3  # more slots than layers: layer -1 is masked
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  frames = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
  return params, config, frames


def test_collect_records_shapes_and_weights(tiny_model):
  params, config, frames = tiny_model
  collected = visualize.collect_records(params, config, frames)
  records = collected['records']
  assert [r.name for r in collected['declared']] == list(records) == [
      'alpha', 'beta', 'F_T', 'F_S', 'U_T', 'U_S']
  assert records['alpha'].shape == (7, 2, 2)
  assert records['beta'].shape == (7, 2, 3)
  np.testing.assert_allclose(records['alpha'].sum(-1), 1, rtol=1e-5)
  np.testing.assert_allclose(records['beta'].sum(-1), 1, rtol=1e-5)
  # Step 0 attends to two zero initial states alike; layer 0 sees only
  # itself, layer 1 layers 0 and 1 (layers < 0 get weight 0).
  np.testing.assert_allclose(records['alpha'][0], 0.5, rtol=1e-6)
  np.testing.assert_array_equal(records['beta'][:, 0], [[0, 0, 1]] * 7)
  assert (records['beta'][:, 1, 0] == 0).all()
  assert (records['beta'][:, 1, 1:] > 0).all()
  for gate in ('F_T', 'F_S', 'U_T', 'U_S'):
    assert records[gate].shape == (7, 2, 8, 8, 8)
    assert ((records[gate] > 0) & (records[gate] < 1)).all()
  from stau_jax import predict  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(collected['predictions'],
                             predict.predict(params, config, frames[None])[0],
                             atol=1e-5)


def test_attention_and_gate_maps_are_images(tiny_model):
  params, config, frames = tiny_model
  collected = visualize.collect_records(params, config, frames)
  records, declared = collected['records'], collected['declared']
  attention = visualize.attention_maps(records, declared, input_length=4)
  gates = visualize.gate_maps(records, declared, input_length=4)
  alpha_only = visualize.attention_maps(records, declared[:1])
  for image in (attention, gates, alpha_only):
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  assert gates.shape[0] > attention.shape[0] > alpha_only.shape[0]
  with pytest.raises(ValueError, match='needs attention weights'):
    visualize.attention_maps(records, declared[2:])
  with pytest.raises(ValueError, match='needs gates'):
    visualize.gate_maps(records, declared[:2])


def test_gate_maps_skip_layers_that_do_not_record_a_gate():
  from stau_jax.models import unit  # pylint: disable=g-import-not-at-top
  gate = np.full((3, 2, 4, 4, 2), 0.5, np.float32)
  declared = (unit.Record('a', ''), unit.Record('b', ''))
  both = visualize.gate_maps({'a': gate, 'b': gate}, declared)
  gate_b = gate.copy()
  gate_b[:, 1] = np.nan  # layer 1 does not record b
  three_rows = visualize.gate_maps({'a': gate, 'b': gate_b}, declared)
  assert both.shape[0] > three_rows.shape[0]


def _export(tmp_path, cell):
  """An export of the tiny config's model with unit `cell`."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from stau_jax import export  # pylint: disable=g-import-not-at-top
  from stau_jax import models  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model.cell = cell
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  path = str(tmp_path / f'{cell}.export')
  export.save_export(path, params, config)
  return path


def _files(cell):
  """The pictures visualize draws for `cell`."""
  from stau_jax import models  # pylint: disable=g-import-not-at-top
  names = ['strip.png', 'animation.gif', 'gates.png']
  if cell in models.stau.CELLS:
    names.append('attention.png')
  return sorted(names)


@pytest.mark.parametrize('cell', visualize.models.CELLS)
def test_every_unit_gets_its_pictures(cell, tmp_path, fast_compile):
  from stau_jax import export  # pylint: disable=g-import-not-at-top
  params, config = export.load_export(_export(tmp_path, cell))
  frames = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
  paths = visualize.write_pictures(params, config, frames,
                                   str(tmp_path / 'out'))
  assert sorted(os.path.basename(p) for p in paths) == _files(cell)
  assert sorted(os.listdir(tmp_path / 'out')) == _files(cell)
  for path in paths:
    assert Image.open(path).size[0] > 64


def test_cli_writes_the_pictures(tmp_path, tiny_model):
  from tests import runs  # pylint: disable=g-import-not-at-top
  _, _, frames = tiny_model
  clips = pictures.to_uint8(np.stack([frames, frames[::-1]]))[..., 0]
  np.save(tmp_path / 'clips.npy', clips)
  # ConvLSTM records gates but no attention weights.
  result = runs.python('-m', 'stau_jax.visualize',
                       f'--export={_export(tmp_path, "convlstm")}',
                       f'--input={tmp_path / "clips.npy"}',
                       f'--output={tmp_path / "out"}', '--index=1',
                       '--index=0')
  names = sorted(os.listdir(tmp_path / 'out'))
  assert names == sorted(f'seq{i}_{name}' for i in (0, 1)
                         for name in _files('convlstm'))
  assert 'Wrote' in result.stdout
  strip = np.asarray(Image.open(tmp_path / 'out' / 'seq1_strip.png'))
  # 16x16 frames are scaled x4; the truth row holds frames 4.. of clip 1.
  width = strip.shape[1]
  truth = strip[66:130, width - (4 * 66 - 2):width - (4 * 66 - 2) + 64]
  np.testing.assert_array_equal(truth[::4, ::4], clips[1, 4])
  assert Image.open(tmp_path / 'out' / 'seq0_animation.gif').n_frames == 8


def test_cli_draws_a_frames_folder_from_start(tmp_path, tiny_model):
  from stau_jax import export  # pylint: disable=g-import-not-at-top
  from tests import runs  # pylint: disable=g-import-not-at-top
  params, config, frames = tiny_model
  export.save_export(str(tmp_path / 'tiny.export'), params, config)
  gray = pictures.to_uint8(frames)[..., 0]
  os.makedirs(tmp_path / 'frames')
  for i, frame in enumerate(np.concatenate([gray[:2], gray])):
    Image.fromarray(frame).save(tmp_path / 'frames' / f'{i:03d}.png')
  runs.python('-m', 'stau_jax.visualize',
              f'--export={tmp_path / "tiny.export"}',
              f'--input={tmp_path / "frames"}', '--start=2',
              f'--output={tmp_path / "out"}')
  strip = np.asarray(Image.open(tmp_path / 'out' / 'strip.png'))
  width = strip.shape[1]
  truth = strip[66:130, width - (4 * 66 - 2):width - (4 * 66 - 2) + 64]
  np.testing.assert_array_equal(truth[::4, ::4], gray[4])


def test_cli_refuses_a_file_as_its_folder_before_reading_the_export(tmp_path):
  from tests import runs  # pylint: disable=g-import-not-at-top
  (tmp_path / 'out.png').write_bytes(b'old')
  result = runs.python('-m', 'stau_jax.visualize', '--export=missing.export',
                       '--input=clips.npy', '--output=out.png', cwd=tmp_path,
                       check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --output=out.png is a file; visualize writes a folder of '
      'pictures: name a folder (it is created if missing)')
  assert (tmp_path / 'out.png').read_bytes() == b'old'
