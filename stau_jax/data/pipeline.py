"""Shared input-pipeline helpers: batching, device split, tf.data.

The numpy helpers work without TensorFlow; the tf.data helpers import it
lazily, so importing this module never imports TensorFlow. Frames stay raw
(B, T, H, W, C): the model patches them itself (`models.patch_frames`).
"""
import hashlib
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np


def eval_total_length(config):
  """Frames per test sequence: data.test_total_length, or total_length when 0."""
  return config.data.test_total_length or config.data.total_length


class TestSet(NamedTuple):
  """A test set opened once per run: files read or memory-mapped, digits
  loaded, tf.data pipelines built. Every `batches` call is a new ordered pass.

  size: sequences, or None when only a pass tells (TFDS moving_mnist).
  chunks: () -> iterator of dicts {'frames': float32 (n, T_test, H, W, C)
    in [0, 1], and for labelled sets 'labels': int32 (n,)}, n varying.
  source: where the sequences come from (a file, a folder, 'generated from
    bundled digits'), for the evaluation files.
  seed: the seed that drew them, for generated sets; else None.
  """
  size: Optional[int]
  chunks: Callable[[], Iterator[dict]]
  source: str = ''
  seed: Optional[int] = None

  def batches(self, batch_size, digest=None):
    """One ordered pass in batches of `batch_size` sequences.

    Yields the chunks' dicts re-batched to B = batch_size rows plus 'valid':
    bool (B,); the last batch is zero-padded and `valid` is False on its
    padding rows (count real sequences with valid.sum()). With `digest` (a
    `new_digest()`), the real rows' frames update it as they pass.
    """
    batches = padded_batches(self.chunks(), batch_size)
    return batches if digest is None else _digested(batches, digest)

  def identity(self, dataset, digest, num_sequences):
    """What an evaluation file records of the sequences it scored: the
    dataset, source, seed, number of sequences and their frames' digest."""
    return {'dataset': dataset, 'source': self.source,
            'num_sequences': int(num_sequences), 'seed': self.seed,
            'digest': 'sha256:' + digest.hexdigest()}


def new_digest():
  """The hash `TestSet.batches` updates: sha256 of the frames as uint8."""
  return hashlib.sha256()


def _digested(batches, digest):
  for batch in batches:
    frames = batch['frames'][batch['valid']]
    digest.update(np.round(frames * 255).astype(np.uint8).tobytes())
    yield batch


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
