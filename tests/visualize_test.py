"""Tests of the PNG strips and GIFs."""
import os

import numpy as np
import pytest
from PIL import Image

from stau_jax import visualize


def _sequence(length=6, size=8, channels=1, seed=0):
  return np.random.default_rng(seed).random((length, size, size, channels),
                                            dtype=np.float32)


def test_strip_puts_predictions_under_the_frames_they_predict():
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  strip = visualize.sequence_strip(frames, predictions, input_length=4)
  assert strip.shape == (2 * 8 + 2, 6 * 10 - 2, 1) and strip.dtype == np.uint8
  np.testing.assert_array_equal(strip[:8, 10:18],
                                visualize.to_uint8(frames[1]))
  np.testing.assert_array_equal(strip[10:, 40:48],
                                visualize.to_uint8(predictions[0]))
  assert (strip[10:, :38] == 255).all()  # no prediction under the inputs


def test_strip_rejects_mismatched_predictions():
  with pytest.raises(ValueError, match='future frames'):
    visualize.sequence_strip(_sequence(), _sequence(length=3), input_length=4)


def test_samples_strip_and_png(tmp_path):
  frames = np.stack([_sequence(channels=3, seed=i) for i in range(3)])
  predictions = frames[:, 4:]
  image = visualize.samples_strip(frames, predictions, input_length=4)
  assert image.shape == (3 * 18 + 2 * 4, 58, 3)
  visualize.save_png(str(tmp_path / 'strip.png'), image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'strip.png')),
                                image)


def test_gif_shows_truth_and_inputs_then_predictions(tmp_path):
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  path = str(tmp_path / 'sub' / 'sequence.gif')
  visualize.save_gif(path, frames, predictions, input_length=4)
  gif = Image.open(path)
  assert gif.n_frames == 6 and gif.size == (18, 8)
  gif.seek(5)
  last = np.asarray(gif.convert('L'))
  np.testing.assert_array_equal(last[:, 10:],
                                visualize.to_uint8(predictions[1])[..., 0])
  np.testing.assert_array_equal(last[:, :8],
                                visualize.to_uint8(frames[5])[..., 0])


def test_frame_strip_rows_are_inputs_truth_prediction_and_error():
  inputs, truth = _sequence(length=4), _sequence(length=3, seed=1)
  prediction = _sequence(length=3, seed=2)
  strip = visualize.frame_strip(inputs, truth, prediction)
  assert strip.shape == (4 * 10 - 2, 4 * 10 - 2, 1) and strip.dtype == np.uint8
  rows = [inputs, truth, prediction, np.abs(truth - prediction)]
  for r, row in enumerate(rows):
    for t, frame in enumerate(row):
      np.testing.assert_array_equal(
          strip[r * 10:r * 10 + 8, t * 10:t * 10 + 8],
          visualize.to_uint8(frame), err_msg=f'row {r}, frame {t}')
  assert (strip[10:, 30:] == 255).all()  # 3 future frames: the 4th is empty
  labeled = visualize.frame_strip(inputs, truth, prediction, labels=True)
  assert labeled.shape[0] == strip.shape[0]
  np.testing.assert_array_equal(labeled[:, -strip.shape[1]:], strip)
  assert (labeled[:, :-strip.shape[1]] < 128).any()  # the row names


def test_frame_strip_scales_frames():
  inputs, truth = _sequence(length=2, channels=3), _sequence(length=2, seed=1,
                                                            channels=3)
  strip = visualize.frame_strip(inputs, truth, truth, scale=3)
  assert strip.shape == (4 * 26 - 2, 2 * 26 - 2, 3)
  np.testing.assert_array_equal(strip[26:50:3, 26:50:3],
                                visualize.to_uint8(truth[1]))
  assert (strip[78:, :24] == 0).all()  # no error where prediction == truth


def test_gif_frame_count_and_scale(tmp_path):
  frames, predictions = _sequence(), _sequence(length=2, seed=1)
  path = str(tmp_path / 'animation.gif')
  visualize.save_gif(path, frames, predictions, input_length=4, scale=2)
  gif = Image.open(path)
  assert gif.n_frames == 6 and gif.size == (2 * 16 + 2, 16)


def test_metric_curves_is_an_rgb_image():
  per_frame = {'mse': [1.0, 2.0, 3.0], 'psnr': [30.0, 20.0, 10.0]}
  image = visualize.metric_curves(per_frame, first_frame=5, title='test')
  assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  assert image.shape[1] > image.shape[0] > 100
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # not blank


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
  clips = visualize.to_uint8(np.stack([frames, frames[::-1]]))[..., 0]
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
