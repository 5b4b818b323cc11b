"""Tests for Moving MNIST generation, the train stream and the test sets."""
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from stau_jax import data as data_lib
from stau_jax.data import mnist_digits
from stau_jax.data import moving_mnist
from tests import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**data):
  config = tiny.get_config()
  config.data.update(data)
  return config


def test_trajectories_stay_in_canvas_and_bounce_at_the_edges():
  rng = np.random.default_rng(0)
  ys, xs = moving_mnist.trajectories(rng, (200, 2), 40)
  for positions in (ys, xs):
    assert positions.min() >= 0 and positions.max() <= 1
    steps = np.diff(positions, axis=-1)
    assert np.abs(steps).max() <= moving_mnist.STEP_LENGTH + 1e-9
    # Direction only reverses at an edge, and every edge hit reverses it.
    reversal = np.sign(steps[..., :-1]) * np.sign(steps[..., 1:]) < 0
    at_edge = np.isin(positions[..., 1:-1], (0.0, 1.0))
    assert reversal.any()
    assert not (reversal & ~at_edge).any()
    hit_and_leave = at_edge & (steps[..., 1:] != 0)
    assert np.all(~hit_and_leave | reversal | (steps[..., :-1] == 0))


def test_render_merges_digits_by_max():
  digits = np.zeros((1, 2, 3, 3), np.uint8)
  digits[0, 0] = 100
  digits[0, 1] = [[50, 200, 50]] * 3
  tops = np.array([[[0], [1]]])
  lefts = np.array([[[0], [1]]])
  frame = moving_mnist.render(digits, tops, lefts, (5, 5))[0, 0]
  expected = np.zeros((5, 5), np.uint8)
  expected[0:3, 0:3] = 100
  expected[1:4, 1:4] = np.maximum(expected[1:4, 1:4], digits[0, 1])
  np.testing.assert_array_equal(frame, expected)


def test_generate_draws_each_28x28_digit_whole_on_a_64x64_canvas():
  bank = np.full((3, 28, 28), 255, np.uint8)
  frames = moving_mnist.generate(np.random.default_rng(1), bank, 8, 1, 20)
  assert frames.shape == (8, 20, 64, 64) and frames.dtype == np.uint8
  np.testing.assert_array_equal((frames > 0).sum(axis=(2, 3)), 28 * 28)
  floats = moving_mnist.to_float(frames)
  assert floats.dtype == np.float32 and floats.shape == (8, 20, 64, 64, 1)
  np.testing.assert_allclose(floats[..., 0], frames / 255.0, rtol=1e-6)


def test_digits_move_one_tenth_of_the_free_canvas_per_frame():
  bank = np.zeros((1, 28, 28), np.uint8)
  bank[0, 0, 0] = 255  # A single bright pixel marks the digit's corner.
  frames = moving_mnist.generate(np.random.default_rng(2), bank, 16, 1, 20)
  corners = np.argwhere(frames)  # (b, t, y, x) of every marked pixel.
  assert len(corners) == 16 * 20
  positions = corners[:, 2:].reshape(16, 20, 2)
  assert positions.min() >= 0 and positions.max() <= 64 - 28
  assert np.abs(np.diff(positions, axis=1)).max() <= int(0.1 * 36) + 1


@pytest.mark.parametrize('num_digits', [1, 2, 3])
def test_train_iterator_shapes_and_range(num_digits):
  config = _config(num_digits=num_digits, image_size=(64, 64),
                   total_length=20, input_length=10)
  batch = next(data_lib.create_train_iterator(config, num_devices=1))
  assert batch.shape == (1, 4, 20, 64, 64, 1) and batch.dtype == np.float32
  assert batch.min() >= 0 and batch.max() <= 1 and batch.max() > 0.9


def test_more_digits_light_more_pixels():
  bank, _ = mnist_digits.load_bundled('train')
  lit = [(moving_mnist.generate(np.random.default_rng(0), bank, 64, d, 4)
          > 0).mean() for d in (1, 2, 3)]
  assert lit[0] < lit[1] < lit[2]


def test_train_stream_is_deterministic_and_seeded():
  config = _config()
  first = [next(data_lib.create_train_iterator(config, num_devices=1))
           for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  other = next(data_lib.create_train_iterator(config, seed=7, num_devices=1))
  assert not np.array_equal(first[0], other)


def test_resume_at_step_equals_the_uninterrupted_stream():
  config = _config()
  stream = data_lib.create_train_iterator(config, num_devices=1)
  uninterrupted = [next(stream) for _ in range(5)]
  resumed = data_lib.create_train_iterator(config, num_devices=1,
                                           start_step=3)
  np.testing.assert_array_equal(next(resumed), uninterrupted[3])
  np.testing.assert_array_equal(next(resumed), uninterrupted[4])


def test_hosts_get_their_own_shard_split_over_devices():
  config = _config()
  config.batch_size = 8
  shards = [next(data_lib.create_train_iterator(
      config, num_devices=2, process_index=i, process_count=2))
            for i in range(2)]
  assert shards[0].shape == (2, 2, 8, 16, 16, 1)
  assert not np.array_equal(shards[0], shards[1])


def test_generated_test_set_uses_heldout_digits(monkeypatch):
  splits = []
  load = mnist_digits.load_digits

  def spy(digits, split, data_dir):
    splits.append(split)
    return load(digits, split, data_dir)

  monkeypatch.setattr(mnist_digits, 'load_digits', spy)
  next(data_lib.create_test_iterator(_config()))
  assert splits == ['heldout']


def test_generated_test_set_is_fixed_and_pads_the_last_batch():
  config = _config(num_test_sequences=10)
  batches = list(data_lib.create_test_iterator(config, 4))
  assert [b['frames'].shape for b in batches] == [(4, 8, 16, 16, 1)] * 3
  np.testing.assert_array_equal(batches[-1]['valid'], [1, 1, 0, 0])
  assert not batches[-1]['frames'][2:].any()
  again = runs.test_arrays(config, 3)
  np.testing.assert_array_equal(
      np.concatenate([b['frames'][b['valid']] for b in batches]), again)
  assert again.shape == (10, 8, 16, 16, 1)


def test_test_length_can_differ_from_training_length():
  config = _config(test_total_length=12, num_test_sequences=2)
  assert runs.test_arrays(config).shape == (2, 12, 16, 16, 1)


def test_official_layout_npy_test_set(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (20, 3, 64, 64), np.uint8)
  path = str(tmp_path / 'mnist_test_seq.npy')
  np.save(path, frames)
  config = _config(test_set=path, image_size=(64, 64), input_length=10,
                   total_length=20)
  config.model.num_downsample = 2
  batches = list(data_lib.create_test_iterator(config, 2))
  assert len(batches) == 2 and batches[1]['valid'].tolist() == [True, False]
  np.testing.assert_allclose(batches[0]['frames'][1, :, :, :, 0],
                             frames[:, 1] / 255.0, rtol=1e-6)


@pytest.mark.parametrize('contents, match', [
    (np.zeros((3, 20, 64, 64), np.float32), r'uint8 \(20, N, 64, 64\)'),
    (None, r'cannot read as a .npy array \(No data left in file\)'),
])
def test_wrong_or_empty_npy_is_a_clear_error_naming_the_file(tmp_path,
                                                              contents, match):
  path = str(tmp_path / 'bad.npy')
  if contents is None:
    open(path, 'wb').close()
  else:
    np.save(path, contents)
  config = _config(test_set=path, image_size=(64, 64))
  data_lib.validate_data_config(config, num_devices=1)  # opens no file
  for opens in (data_lib.test_set_size, data_lib.load_test_set):
    with pytest.raises(ValueError, match=rf'bad.npy: .*{match}'):
      opens(config)


def test_a_directory_as_test_set_is_named(tmp_path):
  path = str(tmp_path / 'set.npy')
  os.mkdir(path)
  with pytest.raises(ValueError, match='set.npy does not exist .it is a '
                     'directory.'):
    data_lib.validate_data_config(_config(test_set=path,
                                          image_size=(64, 64)), num_devices=1)


@pytest.mark.parametrize('change, match', [
    (dict(image_size=(16,)), r'image_size=\(16,\) must be \(height, width\)'),
    (dict(test_total_length=4), 'test_total_length=4 must be larger than '
                                'input_length=4'),
    (dict(test_set='/nowhere/mnist_test_seq.npy'),
     'file /nowhere/mnist_test_seq.npy does not exist'),
    (dict(test_set='something'), "must be 'official', 'generated' or"),
    (dict(digits='emnist'), "digits='emnist' is not one of"),
    (dict(channels=3), 'channels=3: Moving MNIST frames have 1 channel'),
    (dict(dataset='ucf101'), "dataset='ucf101' is not one of"),
])
def test_bad_config_values_are_named(change, match):
  with pytest.raises(ValueError, match=match):
    data_lib.validate_data_config(_config(**change), num_devices=1)


def test_auto_digits_are_resolved_once_at_validation(monkeypatch):
  monkeypatch.setattr(mnist_digits, 'network_available', lambda: False)
  monkeypatch.setattr(mnist_digits, 'tfds_prepared', lambda data_dir: False)
  config = _config(digits='auto')
  data_lib.validate_data_config(config, num_devices=1)
  assert config.data.digits == 'bundled'
  def probe():
    raise AssertionError('probed the network again')
  monkeypatch.setattr(mnist_digits, 'network_available', probe)
  data_lib.validate_data_config(config, num_devices=1)
  next(data_lib.create_test_iterator(config))


def test_batch_not_divisible_by_devices_is_named():
  config = _config()
  config.batch_size = 6
  with pytest.raises(ValueError, match=r'batch_size=6 is not divisible by '
                     r'the 4 devices'):
    data_lib.validate_data_config(config, num_devices=4)


@pytest.mark.parametrize('value', [0, -4])
def test_a_batch_size_that_is_not_a_positive_integer_says_so(value):
  config = _config()
  config.batch_size = value
  with pytest.raises(ValueError, match=rf'batch_size={value!r} must be a '
                     'positive integer'):
    data_lib.validate_data_config(config, num_devices=1)


_NO_TF_SCRIPT = r"""
import sys
sys.modules['tensorflow'] = None  # Any `import tensorflow` now fails.
try:
  import tensorflow
  raise SystemExit('tensorflow was importable')
except ImportError:
  pass
import stau_jax
import stau_jax.data as data_lib
from configs import tiny
config = tiny.get_config()
config.data.digits = 'auto'
stream = data_lib.create_train_iterator(config, num_devices=1)
batches = [next(stream) for _ in range(3)]
test = next(data_lib.create_test_iterator(config))
assert batches[0].shape == (1, 4, 8, 16, 16, 1), batches[0].shape
assert test['frames'].shape == (8, 8, 16, 16, 1)
assert sys.modules['tensorflow'] is None
print('ok without tensorflow')
"""


def test_moving_mnist_runs_with_tensorflow_hidden():
  result = subprocess.run(
      [sys.executable, '-c', _NO_TF_SCRIPT], cwd=REPO, capture_output=True,
      text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ok without tensorflow' in result.stdout


def test_importing_the_data_package_does_not_import_tensorflow():
  result = subprocess.run(
      [sys.executable, '-c', 'import sys, stau_jax.data, stau_jax.data.video, '
       "stau_jax.data.pipeline; print('tensorflow' in sys.modules)"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == 'False'


def test_next_wall_labels_follow_the_rule_on_drawn_trajectories():
  # (y, x) of digit 0 over 6 frames, the first 3 observed; digit 1 ignored.
  cases = [
      ([.3, .1, .2, .4, 0., .3], [.5] * 6, 0),  # top, at frame 4
      ([.5] * 6, [.5, .6, .8, .9, 1., .9], 3),  # right
      ([0., .1, .2, .3, .4, .5], [.5] * 6, 4),  # top bounce while observed
      ([.5, .6, .7, .8, .9, 1.], [.9, .8, .7, .6, .5, 0.], 1),  # bottom
      ([.2] * 6, [.3, .2, .1, 0., .1, .2], 2),  # left, at the first unseen
      ([.1, .1, .1, 1., .1, 1.], [.1, .1, .1, 0., .1, 0.], 1),  # corner
  ]
  ys = np.array([[y, [1.] * 6] for y, _, _ in cases])
  xs = np.array([[x, [1.] * 6] for _, x, _ in cases])
  labels = moving_mnist.next_wall_labels(ys, xs, input_length=3)
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [label for *_, label in cases])


def test_labelled_sets_are_the_same_videos_with_wall_labels_they_show():
  bank = np.zeros((1, 7, 7), np.uint8)
  bank[0, 0, 0] = 255  # A single bright pixel marks the digit's corner.
  kwargs = dict(seed=3, num_sequences=150, num_digits=1, total_length=12,
                image_size=(16, 16))
  chunks = list(moving_mnist.labelled_test_set(bank, input_length=4,
                                               **kwargs))
  frames = np.concatenate([f for f, _ in chunks])
  labels = np.concatenate([l for _, l in chunks])
  np.testing.assert_array_equal(
      frames, np.concatenate(list(moving_mnist.generated_test_set(bank,
                                                                  **kwargs))))
  assert set(labels) == set(range(5))  # every class occurs
  corners = np.argwhere(frames[:, 4:])  # (b, t, row, col), one per frame
  rows = corners[:, 2].reshape(150, 8)
  cols = corners[:, 3].reshape(150, 8)
  edges = {0: rows == 0, 1: rows == 16 - 7, 2: cols == 0, 3: cols == 16 - 7}
  for wall, at_wall in edges.items():  # the named wall is reached
    assert at_wall[labels == wall].any(axis=1).all()
  # Bottom and right are only reached by bouncing: never without a label.
  assert not (edges[1] | edges[3])[labels == 4].any()
  train = data_lib.create_labelled_train_iterator(
      _config(total_length=12), num_devices=1)
  batch = next(train)
  assert batch['frames'].shape == (1, 4, 12, 16, 16, 1)
  assert batch['labels'].shape == (1, 4) and batch['labels'].dtype == np.int32


@pytest.mark.parametrize('test_set', ['npy', 'generated'])
def test_a_test_set_is_read_once_and_every_pass_is_the_same(
    tmp_path, monkeypatch, test_set):
  """Files and digits are read when the set is loaded, not on every pass."""
  path = str(tmp_path / 'mnist_test_seq.npy')
  np.save(path, np.random.default_rng(0).integers(0, 256, (20, 5, 64, 64),
                                                  np.uint8))
  config = (_config(test_set=path, image_size=(64, 64), input_length=10,
                    total_length=20) if test_set == 'npy' else
            _config(num_test_sequences=5))
  reads = []
  for module, name in ((np, 'load'), (mnist_digits, 'load_digits')):
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, original=original, **k: (
        reads.append(a[0]), original(*a, **k))[1])
  loaded = data_lib.load_test_set(config)
  assert len(reads) == 1 and loaded.size == 5
  passes = [np.concatenate([b['frames'][b['valid']]
                            for b in loaded.batches(batch_size)])
            for batch_size in (2, 3, 2)]
  assert len(reads) == 1
  np.testing.assert_array_equal(passes[0], passes[1])
  np.testing.assert_array_equal(passes[0], passes[2])
  assert passes[0].shape[0] == 5
