"""Tests for stau_jax.predict: input handling, batching and the CLI."""
import os
import subprocess
import sys
import tracemalloc

import jax
import numpy as np
from PIL import Image
import pytest

from configs import tiny
from stau_jax import errors
from stau_jax import export
from stau_jax import models
from stau_jax import predict
from tests import runs
from tests.videos import video_frames
from tests.videos import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
  config = tiny.get_config()
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  path = str(tmp_path_factory.mktemp('export') / 'tiny.export')
  export.save_export(path, params, config)
  return path, params, config


def _clips(num, config, length=None, seed=0):
  height, width = config.data.image_size
  return np.random.default_rng(seed).uniform(
      size=(num, length or config.data.total_length, height, width,
            config.data.channels)).astype(np.float32)


def test_predictions_are_the_models_future_frames(tiny_export):
  _, params, config = tiny_export
  clips = _clips(3, config)
  observed = clips.copy()
  observed[:, config.data.input_length:] = 0
  expected = models.create_model(config).apply({'params': params}, observed)
  future = predict.predict(params, config, clips, batch_size=3, clip=False)
  num_future = config.data.total_length - config.data.input_length
  assert future.shape == (3, num_future, 16, 16, 1)
  assert future.dtype == np.float32
  np.testing.assert_allclose(future, expected[:, -num_future:], atol=1e-5)


def test_batching_pads_the_last_batch_without_changing_results(tiny_export):
  _, params, config = tiny_export
  clips = _clips(5, config)
  np.testing.assert_allclose(
      predict.predict(params, config, clips, batch_size=2),
      predict.predict(params, config, clips, batch_size=5), atol=1e-5)


def test_uint8_and_channelless_input_equal_float_input(tiny_export):
  _, params, config = tiny_export
  clips = (_clips(2, config, length=config.data.input_length) * 255).astype(
      np.uint8)
  from_uint8 = predict.predict(params, config, clips[..., 0])
  from_float = predict.predict(params, config, clips.astype(np.float32) / 255)
  np.testing.assert_array_equal(from_uint8, from_float)
  assert from_uint8.min() >= 0 and from_uint8.max() <= 1


@pytest.mark.parametrize('frames, message', [
    (np.zeros((2, 8, 16, 16, 3), np.float32), r'are \(16, 16, 3\)'),
    (np.zeros((2, 8, 16), np.float32), 'must be'),
    (np.zeros((2, 3, 16, 16), np.float32), 'at least input_length=4'),
    (np.full((2, 8, 16, 16), 2.0, np.float32), r'in \[0, 1\]'),
    (np.zeros((2, 8, 16, 16), np.int32), 'uint8 or float'),
])
def test_bad_input_is_a_clear_error(tiny_export, frames, message):
  _, params, config = tiny_export
  with pytest.raises(ValueError, match=message):
    predict.predict(params, config, frames)


@pytest.mark.parametrize('batch_size', [0, -1])
def test_non_positive_batch_size_is_an_error(tiny_export, batch_size):
  _, params, config = tiny_export
  with pytest.raises(ValueError, match='batch_size must be a positive'):
    predict.predict(params, config, _clips(2, config), batch_size=batch_size)


def test_memory_mapped_input_is_converted_batch_by_batch(tiny_export,
                                                         tmp_path):
  _, params, config = tiny_export
  clips = (_clips(256, config) * 255).astype(np.uint8)
  np.save(tmp_path / 'in.npy', clips)
  frames = np.load(tmp_path / 'in.npy', mmap_mode='r')
  batches = predict.predict_batches(params, config, frames, batch_size=4)
  first = next(batches)  # compiled; now measure the rest
  tracemalloc.start()
  rest = [len(batch) for batch in batches]
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert len(first) + sum(rest) == 256
  float_input = clips[:, :config.data.input_length].size * 4  # 1 MB
  assert peak < float_input / 4, peak


def test_cli_writes_exactly_the_output_path(tiny_export, tmp_path):
  path, params, config = tiny_export
  clips = (_clips(3, config) * 255).astype(np.uint8)
  np.save(tmp_path / 'in.npy', clips)
  output = tmp_path / 'future.out'  # np.save would have written .out.npy
  subprocess.run(
      [sys.executable, '-m', 'stau_jax.predict', f'--export={path}',
       f'--input={tmp_path / "in.npy"}', f'--output={output}',
       '--batch_size=2'], check=True, cwd=ROOT, capture_output=True)
  assert sorted(os.listdir(tmp_path)) == ['future.out', 'in.npy']
  np.testing.assert_allclose(np.load(output),
                             predict.predict(params, config, clips), atol=1e-5)


def test_cli_checks_the_output_path_before_predicting(tiny_export, tmp_path):
  path, _, config = tiny_export
  np.save(tmp_path / 'in.npy', _clips(3, config))
  output = tmp_path / 'missing_dir' / 'out.npy'
  result = subprocess.run(
      [sys.executable, '-m', 'stau_jax.predict', f'--export={path}',
       f'--input={tmp_path / "in.npy"}', f'--output={output}'], cwd=ROOT,
      capture_output=True, text=True)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'error: The folder of --output={output} does not exist '
      f'({output.parent}): create it first']


def test_cli_on_a_full_disk_names_the_output_and_keeps_the_old_one(
    tiny_export, tmp_path):
  path, _, config = tiny_export
  np.save(tmp_path / 'in.npy', _clips(3, config))
  output = tmp_path / 'out.npy'
  output.write_bytes(b'old predictions')
  result = runs.python_on_full_disk(
      'stau_jax.predict', f'--export={path}', f'--input={tmp_path / "in.npy"}',
      f'--output={output}')
  runs.assert_full_disk_error(result, str(output), tmp_path,
                              b'old predictions')


def _gray_video(tmp_path, count=10):
  """A 16x16 mpeg4 clip and a folder of its frames as PNG; (path, folder,
  uint8 (count, 16, 16, 3) frames)."""
  frames = video_frames(count, 16, 16)
  path = write_video(tmp_path / 'clip.mp4', frames, 'mpeg4')
  os.makedirs(tmp_path / 'frames')
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / 'frames' / f'{i:03d}.png')
  return path, str(tmp_path / 'frames'), frames


def test_video_and_frames_folder_inputs_are_one_sequence(tiny_export,
                                                         tmp_path):
  _, params, config = tiny_export
  path, folder, frames = _gray_video(tmp_path)
  gray = np.stack([np.asarray(Image.fromarray(f).convert('L'))
                   for f in frames])[None, ..., None]
  from_folder = predict.read_input(folder, config)
  np.testing.assert_array_equal(from_folder, gray)
  np.testing.assert_array_equal(predict.read_input(folder, config, start=3),
                                gray[:, 3:])
  from_video = predict.read_input(path, config)
  assert from_video.shape == gray.shape and from_video.dtype == np.uint8
  assert np.abs(from_video / 255 - gray / 255).mean() < 0.02
  np.testing.assert_allclose(predict.predict(params, config, from_folder),
                             predict.predict(params, config, gray / 255),
                             atol=1e-6)


def test_video_input_of_another_size_is_refused_or_resized(tiny_export,
                                                           tmp_path):
  _, _, config = tiny_export
  frames = np.zeros((5, 24, 40, 3), np.uint8)
  frames[:, :, 12:28] = 255  # the centre 24x16 survives the crop
  os.makedirs(tmp_path / 'big')
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / 'big' / f'{i}.png')
  with pytest.raises(errors.InputError, match=r'Input frames are 24x40 but '
                     r'the model was trained on 16x16.*pass --resize'):
    predict.read_input(str(tmp_path / 'big'), config)
  resized = predict.read_input(str(tmp_path / 'big'), config, resize=True)
  assert resized.shape == (1, 5, 16, 16, 1)
  assert resized[0, 0, :, 4:12].min() > 200 and resized[0, 0, :, 0].max() < 60
  np.save(tmp_path / 'in.npy', np.zeros((1, 8, 16, 16), np.uint8))
  with pytest.raises(errors.InputError, match='--resize applies to a video'):
    predict.read_input(str(tmp_path / 'in.npy'), config, resize=True)
  with pytest.raises(errors.InputError, match=r"--start=5 is past the video's "
                     '5 frames'):
    predict.read_input(str(tmp_path / 'big'), config, start=5)


@pytest.mark.parametrize('count, panels', [(10, 2), (6, 1)])
def test_cli_predicts_a_video_and_writes_a_gif(tiny_export, tmp_path, count,
                                               panels):
  path, params, config = tiny_export
  video_path, _, _ = _gray_video(tmp_path, count)
  output, gif = tmp_path / 'future.npy', tmp_path / 'future.gif'
  subprocess.run(
      [sys.executable, '-m', 'stau_jax.predict', f'--export={path}',
       f'--input={video_path}', '--start=1', f'--output={output}',
       f'--gif={gif}'], check=True, cwd=ROOT, capture_output=True)
  expected = predict.predict(params, config,
                             predict.read_input(video_path, config, start=1))
  np.testing.assert_allclose(np.load(output), expected, atol=1e-5)
  with Image.open(gif) as animation:
    assert animation.n_frames == config.data.total_length
    # 16-pixel frames are drawn 4x; with the truth, two panels and a gap.
    assert animation.size == ((64, 64) if panels == 1 else (130, 64))
