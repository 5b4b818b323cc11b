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


def test_per_device_batch_names_the_values():
  assert pipeline.per_device_batch(16, 2, 2) == 4
  with pytest.raises(ValueError, match=r'batch_size=6 is not divisible by '
                     r'num_devices \* process_count = 4 \* 1'):
    pipeline.per_device_batch(6, 4)


def test_padded_batches_keep_every_row_and_mark_padding():
  chunks = [np.full((n, 2), i + 1) for i, n in enumerate((3, 1, 3))]
  batches = list(pipeline.padded_batches(chunks, 3))
  assert [b.shape for b, _ in batches] == [(3, 2)] * 3
  np.testing.assert_array_equal(batches[-1][1], [True, False, False])
  np.testing.assert_array_equal(batches[-1][0][1:], 0)
  kept = np.concatenate([b[v] for b, v in batches])
  np.testing.assert_array_equal(kept, np.concatenate(chunks))


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
