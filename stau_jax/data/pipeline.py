"""Shared input-pipeline helpers: batching, device split, tf.data.

The numpy helpers work without TensorFlow; the tf.data helpers import it
lazily, so importing this module never imports TensorFlow. Frames stay raw
(B, T, H, W, C): the model patches them itself (`models.patch_frames`).
"""
import numpy as np


def split_for_devices(batch, num_devices):
  """(B, ...) -> (num_devices, B // num_devices, ...), for pmap."""
  if batch.shape[0] % num_devices:
    raise ValueError(f'a batch of {batch.shape[0]} does not split over '
                     f'{num_devices} devices')
  return batch.reshape((num_devices, -1) + batch.shape[1:])


def padded_batches(chunks, batch_size):
  """Re-batches a finite stream of dicts of arrays, padding the last batch.

  Args:
    chunks: iterable of dicts {name: array (n_i, ...)}, n_i the same within
      a dict and any across them.
    batch_size: size B of every yielded batch.

  Yields:
    {name: (B, ...), 'valid': bool (B,)}: the last batch is zero-padded and
    its padding rows are marked False in 'valid'.
  """
  pending = []
  pending_count = 0

  def joined():
    return {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}

  for chunk in chunks:
    pending.append(chunk)
    pending_count += len(next(iter(chunk.values())))
    while pending_count >= batch_size:
      rows = joined()
      yield {**{k: v[:batch_size] for k, v in rows.items()},
             'valid': np.ones(batch_size, bool)}
      pending = [{k: v[batch_size:] for k, v in rows.items()}]
      pending_count -= batch_size
  if pending_count:
    rows = joined()
    yield {**{k: np.concatenate([v, np.zeros(
        (batch_size - pending_count,) + v.shape[1:], v.dtype)])
              for k, v in rows.items()},
           'valid': np.arange(batch_size) < pending_count}


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
