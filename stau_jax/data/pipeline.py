"""Shared input-pipeline helpers: batching, device split, tf.data.

The numpy helpers work without TensorFlow; the tf.data helpers import it
lazily, so importing this module never imports TensorFlow. Frames stay raw
(B, T, H, W, C): the model patches them itself (`models.patch_frames`).
"""
import numpy as np


def eval_total_length(config):
  """Frames per test sequence: data.test_total_length, or total_length when 0."""
  return config.data.get('test_total_length') or config.data.total_length


def per_device_batch(batch_size, num_devices, process_count=1):
  """Batch size per device; raises when the global batch does not split."""
  if batch_size % (num_devices * process_count):
    raise ValueError(
        f'batch_size={batch_size} is not divisible by num_devices * '
        f'process_count = {num_devices} * {process_count}; use a multiple of '
        f'{num_devices * process_count}.')
  return batch_size // (num_devices * process_count)


def split_for_devices(batch, num_devices):
  """(B, ...) -> (num_devices, B // num_devices, ...), for pmap."""
  if batch.shape[0] % num_devices:
    raise ValueError(f'a batch of {batch.shape[0]} does not split over '
                     f'{num_devices} devices')
  return batch.reshape((num_devices, -1) + batch.shape[1:])


def padded_batches(chunks, batch_size):
  """Re-batches a finite stream of arrays, padding the last batch.

  Args:
    chunks: iterable of arrays (n_i, ...) of any n_i.
    batch_size: size B of every yielded batch.

  Yields:
    (batch (B, ...), valid bool (B,)): the last batch is zero-padded and its
    padding rows are marked False in `valid`.
  """
  pending = []
  pending_count = 0
  for chunk in chunks:
    pending.append(chunk)
    pending_count += len(chunk)
    while pending_count >= batch_size:
      joined = np.concatenate(pending)
      yield joined[:batch_size], np.ones(batch_size, bool)
      pending = [joined[batch_size:]]
      pending_count -= batch_size
  if pending_count:
    joined = np.concatenate(pending)
    padding = np.zeros((batch_size - pending_count,) + joined.shape[1:],
                       joined.dtype)
    valid = np.arange(batch_size) < pending_count
    yield np.concatenate([joined, padding]), valid


def as_numpy_batches(dataset, num_devices):
  """Iterates a batched tf.data.Dataset as numpy, split over devices.

  Elements may be a tensor (B, T, H, W, C) or a dict holding 'frames'; every
  leaf gets the leading device axis.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for element in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    if isinstance(element, dict):
      yield {k: split_for_devices(v, num_devices) for k, v in element.items()}
    else:
      yield split_for_devices(element, num_devices)


def window_index_dataset(num_windows, *, seed, process_index=0,
                         process_count=1, start_element=0, shuffle=True,
                         repeat=True):
  """tf.data stream of window indices: shuffled with `seed`, repeated, sharded.

  Every host shuffles identically and keeps every process_count-th index, so
  hosts see disjoint shards. `start_element` skips that many of this host's
  indices (cheap: it happens before any decoding), which makes training
  resumable at a step.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dataset = tf.data.Dataset.range(num_windows)
  if shuffle:
    dataset = dataset.shuffle(num_windows, seed=seed,
                              reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.shard(process_count, process_index)
  if start_element:
    dataset = dataset.skip(start_element)
  return dataset


def deterministic_options():
  """tf.data options that keep element order fixed for a seed."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.deterministic = True
  return options
