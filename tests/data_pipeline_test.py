"""Tests for stau_jax.data.pipeline: batching, device split, tf.data."""
import numpy as np
import pytest

from stau_jax.data import pipeline


def test_split_for_devices_adds_a_leading_device_axis():
  batch = np.arange(8 * 3).reshape(8, 3)
  split = pipeline.split_for_devices(batch, 4)
  assert split.shape == (4, 2, 3)
  np.testing.assert_array_equal(split.reshape(8, 3), batch)
  with pytest.raises(ValueError, match='a batch of 8 does not split over 3'):
    pipeline.split_for_devices(batch, 3)


def test_padded_batches_keep_every_row_and_mark_padding():
  sizes = (3, 1, 3)
  chunks = [{'frames': np.full((n, 2), i + 1), 'labels': np.full(n, 10 + i)}
            for i, n in enumerate(sizes)]
  batches = list(pipeline.padded_batches(chunks, 3))
  assert [b['frames'].shape for b in batches] == [(3, 2)] * 3
  assert [b['labels'].shape for b in batches] == [(3,)] * 3
  np.testing.assert_array_equal(batches[-1]['valid'], [True, False, False])
  np.testing.assert_array_equal(batches[-1]['frames'][1:], 0)
  np.testing.assert_array_equal(batches[-1]['labels'][1:], 0)
  for name in ('frames', 'labels'):
    kept = np.concatenate([b[name][b['valid']] for b in batches])
    np.testing.assert_array_equal(kept, np.concatenate(
        [c[name] for c in chunks]))


def test_window_index_dataset_is_seeded_repeated_and_sharded():
  pytest.importorskip('tensorflow')
  def take(count, **kwargs):
    dataset = pipeline.window_index_dataset(5, **kwargs)
    return [int(i) for i in dataset.take(count).as_numpy_iterator()]
  stream = take(10, seed=0)
  assert sorted(stream[:5]) == sorted(stream[5:]) == list(range(5))
  assert take(10, seed=0) == stream
  assert take(4, seed=0, start_element=6) == stream[6:]
  host0 = take(5, seed=0, process_index=0, process_count=2)
  host1 = take(5, seed=0, process_index=1, process_count=2)
  assert host0 == stream[0:10:2] and host1 == stream[1:10:2]
  assert take(5, seed=0, shuffle=False, repeat=False) == list(range(5))
