"""Tests of the attention and gate pictures and the visualize CLI."""
import os

import numpy as np
import pytest
from PIL import Image

from stau_jax import pictures
from stau_jax import visualize


def test_reorder_attention_lists_oldest_first():
  steps, num_layers, tau, theta = 7, 4, 3, 2
  # Slot s holds the newest step (layer) that was written to it.
  alpha = np.array([[[t - 1 - (t - 1 - s) % tau for s in range(tau)]
                     for _ in range(num_layers)] for t in range(steps)])
  beta = np.array([[[k - (k - s) % theta + 100 for s in range(theta)]
                    for k in range(num_layers)] for _ in range(steps)])
  alpha, beta = visualize.reorder_attention(alpha[..., None], beta[..., None])
  for t in range(steps):
    np.testing.assert_array_equal(alpha[t, :, :, 0],
                                  np.tile(np.arange(t - tau, t), (4, 1)))
  np.testing.assert_array_equal(beta[0, :, :, 0],
                                [[0, 100], [100, 101], [101, 102], [102, 103]])
  assert visualize.reorder_attention() == (None, None)


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


def test_collect_attention_shapes_and_weights(tiny_model):
  params, config, frames = tiny_model
  collected = visualize.collect_attention(params, config, frames)
  assert collected['alpha'].shape == (7, 2, 2)
  assert collected['beta'].shape == (7, 2, 3)
  np.testing.assert_allclose(collected['alpha'].sum(-1), 1, rtol=1e-5)
  np.testing.assert_allclose(collected['beta'].sum(-1), 1, rtol=1e-5)
  # Step 0 attends to two zero initial states alike; layer 0 sees only
  # itself, layer 1 layers 0 and 1 (layers < 0 get weight 0).
  np.testing.assert_allclose(collected['alpha'][0], 0.5, rtol=1e-6)
  np.testing.assert_array_equal(collected['beta'][:, 0], [[0, 0, 1]] * 7)
  assert (collected['beta'][:, 1, 0] == 0).all()
  assert (collected['beta'][:, 1, 1:] > 0).all()
  assert sorted(collected['gates']) == ['F_S', 'F_T', 'U_S', 'U_T']
  for gate in collected['gates'].values():
    assert gate.shape == (7, 2, 8, 8, 8)
    assert ((gate > 0) & (gate < 1)).all()
  from stau_jax import predict  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(collected['predictions'],
                             predict.predict(params, config, frames[None])[0],
                             atol=1e-5)


def test_attention_and_gate_maps_are_images(tiny_model):
  params, config, frames = tiny_model
  collected = visualize.collect_attention(params, config, frames)
  attention = visualize.attention_maps(collected['alpha'], collected['beta'],
                                       input_length=4)
  gates = visualize.gate_maps(collected['gates'], input_length=4)
  alpha_only = visualize.attention_maps(alpha=collected['alpha'])
  for image in (attention, gates, alpha_only):
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  assert gates.shape[0] > attention.shape[0] > alpha_only.shape[0]
  with pytest.raises(ValueError, match='alpha or beta'):
    visualize.attention_maps()


def test_cli_writes_the_pictures(tmp_path, tiny_model):
  from stau_jax import export  # pylint: disable=g-import-not-at-top
  from tests import runs  # pylint: disable=g-import-not-at-top
  params, config, frames = tiny_model
  export.save_export(str(tmp_path / 'tiny.export'), params, config)
  clips = pictures.to_uint8(np.stack([frames, frames[::-1]]))[..., 0]
  np.save(tmp_path / 'clips.npy', clips)
  result = runs.python('-m', 'stau_jax.visualize',
                       f'--export={tmp_path / "tiny.export"}',
                       f'--input={tmp_path / "clips.npy"}',
                       f'--output={tmp_path / "out"}', '--index=1',
                       '--index=0')
  names = sorted(os.listdir(tmp_path / 'out'))
  assert names == sorted(f'seq{i}_{name}' for i in (0, 1) for name in (
      'strip.png', 'animation.gif', 'attention.png', 'gates.png'))
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
