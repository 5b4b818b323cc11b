"""Input pipelines: Moving MNIST and the paper's real-video datasets.

Entry points used by the training loop (importable without TensorFlow):

* `validate_data_config(config, ...)`: raises ValueError for bad settings.
  The entry points (train.validate_config, evaluate_params) run it once,
  before any work; the functions below trust the config.
* `create_train_iterator(config, ...)`: endless, resumable iterator of
  float32 (num_devices, per_device_batch, T, H, W, C) batches in [0, 1].
* `load_test_set(config)`: the test set opened once per run (a `TestSet`);
  each `TestSet.batches(B)` is one deterministic pass as dicts {'frames':
  float32 (B, T_test, H, W, C), 'valid': bool (B,)}; the last batch is
  zero-padded to B and `valid` marks its real rows. `create_test_iterator`
  is one such pass, for one-off use.
* `create_labelled_train_iterator` and `load_labelled_test_set`: the same
  with action labels, for early action recognition ('sthsth', and
  'moving_mnist' labelled by `moving_mnist.next_wall_labels`).

Moving MNIST is pure numpy (it runs without TensorFlow); the real-video
datasets ('kitti', 'towncentre', 'sthsth') are tf.data pipelines.
"""
import os
from typing import Callable, Iterator, NamedTuple, Optional

from absl import logging
import numpy as np

from stau_jax.data import mnist_digits
from stau_jax.data import moving_mnist
from stau_jax.data import pipeline

VIDEO_DATASETS = ('kitti', 'towncentre', 'sthsth')
DATASETS = ('moving_mnist',) + VIDEO_DATASETS
DIGIT_SOURCES = ('auto', 'tfds', 'bundled')



def eval_total_length(config):
  """Frames per test sequence: data.test_total_length, or total_length when 0."""
  return config.data.get('test_total_length') or config.data.total_length


def _local_device_count():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.local_device_count()


def validate_data_config(config, num_devices=None, process_count=1):
  """Raises ValueError naming the bad value and what is expected.

  Checks the dataset name, frame size and sequence lengths, batch
  divisibility by devices and hosts, and (for the real-video datasets and
  .npy test sets) that the input files exist. The model's constraints on
  them (patch_size * 2**num_downsample dividing the frame size) are
  `models.validate_model_config`'s.
  """
  data = config.data
  if data.dataset not in DATASETS:
    raise ValueError(f'config.data.dataset={data.dataset!r} is not one of '
                     f'{DATASETS}')
  image_size = data.image_size
  if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or
      not all(isinstance(x, int) and x > 0 for x in image_size)):
    raise ValueError(f'config.data.image_size={image_size} must be (height, '
                     'width) with positive sizes, e.g. '
                     '--config.data.image_size="(64, 64)"')
  if eval_total_length(config) <= data.input_length:
    raise ValueError(
        f'config.data.test_total_length={eval_total_length(config)} must be '
        f'larger than input_length={data.input_length}')
  num_devices = num_devices or _local_device_count()
  for name in ('batch_size', 'eval_batch_size'):
    value = config[name]
    if value <= 0 or value % (num_devices * process_count):
      raise ValueError(
          f'config.{name}={value} is not divisible by num_devices * '
          f'process_count = {num_devices} * {process_count}; use a positive '
          f'multiple of {num_devices * process_count}.')
  if data.dataset == 'moving_mnist':
    _validate_moving_mnist(config)
  else:
    from stau_jax.data import video  # pylint: disable=g-import-not-at-top
    video.validate(config)


def _validate_moving_mnist(config):
  data = config.data
  if data.channels != 1:
    raise ValueError(f'config.data.channels={data.channels}: Moving MNIST '
                     'frames have 1 channel')
  if data.num_digits < 1:
    raise ValueError(f'config.data.num_digits={data.num_digits} must be >= 1')
  if data.test_set == 'generated' and not (
      isinstance(data.num_test_sequences, int) and
      data.num_test_sequences > 0):
    raise ValueError(f'config.data.num_test_sequences='
                     f'{data.num_test_sequences} must be positive')
  if data.digits not in DIGIT_SOURCES:
    raise ValueError(f'config.data.digits={data.digits!r} is not one of '
                     f'{DIGIT_SOURCES}')
  if data.test_set not in ('official', 'generated'):
    path = data.test_set
    if not path.endswith('.npy'):
      raise ValueError(
          f"config.data.test_set={path!r} must be 'official', 'generated' or "
          'the path of an .npy file in the official layout uint8 (20, N, 64, '
          '64)')
    if not os.path.exists(path):
      raise ValueError(f'config.data.test_set: file {path} does not exist')
    moving_mnist.load_official_npy(path, eval_total_length(config))
  if (data.test_set == 'official' and
      not mnist_digits.tensorflow_available()):
    raise ValueError("config.data.test_set='official' reads TFDS "
                     'moving_mnist, which needs TensorFlow; install it or pass '
                     'the path of mnist_test_seq.npy')
  if data.test_set != 'generated':
    if tuple(data.image_size) != (64, 64):
      raise ValueError(
          f'config.data.image_size={tuple(data.image_size)}: the official '
          'Moving MNIST test set is 64x64; use (64, 64) or test_set='
          "'generated'")
    if eval_total_length(config) > 20:
      raise ValueError(
          f'test_total_length={eval_total_length(config)}: the official '
          'Moving MNIST test set has 20 frames per sequence')


def _digit_bank(config, split):
  """uint8 digits (N, s, s) of `split`, resized for the canvas."""
  digits, _ = mnist_digits.load_digits(config.data.digits, split,
                                       config.data.data_dir)
  size = moving_mnist.digit_size_for(tuple(config.data.image_size))
  return mnist_digits.resize_digits(digits, size)


def create_train_iterator(config, *, seed=None, num_devices=None,
                          start_step=0, process_index=0, process_count=1):
  """Endless iterator of training batches, split over local devices.

  Args:
    config: experiment config (see configs/mmnist.py), validated
      (`validate_data_config`).
    seed: stream seed; defaults to config.seed.
    num_devices: local devices; defaults to jax.local_device_count().
    start_step: first batch yielded; the stream from step k equals the
      uninterrupted stream's batches k, k + 1, ... (checkpoint resume).
    process_index: this host's index; each host draws its own shard.
    process_count: number of hosts; config.batch_size is the global batch.

  Returns:
    Iterator of float32 arrays (num_devices, batch_size // (num_devices *
    process_count), T, H, W, C) in [0, 1]; the model patches frames itself.
  """
  num_devices = num_devices or _local_device_count()
  seed = config.seed if seed is None else seed
  host_batch = config.batch_size // process_count
  data = config.data
  if data.dataset != 'moving_mnist':
    from stau_jax.data import video  # pylint: disable=g-import-not-at-top
    return video.create_train_iterator(
        config, seed=seed, num_devices=num_devices, start_step=start_step,
        process_index=process_index, process_count=process_count)
  bank = _digit_bank(config, 'train')
  batches = moving_mnist.train_batches(
      bank, seed=seed, batch_size=host_batch, num_digits=data.num_digits,
      total_length=data.total_length, image_size=tuple(data.image_size),
      start_step=start_step, process_index=process_index)
  return (pipeline.split_for_devices(batch, num_devices) for batch in batches)


class TestSet(NamedTuple):
  """A test set opened once per run: files read or memory-mapped, digits
  loaded, tf.data pipelines built. Every `batches` call is a new ordered pass.

  size: sequences, or None when only a pass tells (TFDS moving_mnist).
  chunks: () -> iterator of dicts {'frames': float32 (n, T_test, H, W, C)
    in [0, 1], and for labelled sets 'labels': int32 (n,)}, n varying.
  """
  size: Optional[int]
  chunks: Callable[[], Iterator[dict]]

  def batches(self, batch_size):
    """One ordered pass in batches of `batch_size` sequences.

    Yields the chunks' dicts re-batched to B = batch_size rows plus 'valid':
    bool (B,); the last batch is zero-padded and `valid` is False on its
    padding rows (count real sequences with valid.sum()).
    """
    return pipeline.padded_batches(self.chunks(), batch_size)


def _moving_mnist_frames(chunks):
  return ({'frames': moving_mnist.to_float(frames)} for frames in chunks)


def load_test_set(config):
  """The `TestSet` of config's test frames (config validated)."""
  data = config.data
  length = eval_total_length(config)
  if data.dataset != 'moving_mnist':
    from stau_jax.data import video  # pylint: disable=g-import-not-at-top
    return video.load_test_set(config)
  if data.test_set == 'generated':
    bank = _digit_bank(config, 'heldout')
    seed = data.get('test_seed', 1234)
    logging.info('Generated Moving MNIST test set: %d sequences, seed %d.',
                 data.num_test_sequences, seed)
    return TestSet(data.num_test_sequences, lambda: _moving_mnist_frames(
        moving_mnist.generated_test_set(
            bank, seed=seed, num_sequences=data.num_test_sequences,
            num_digits=data.num_digits, total_length=length,
            image_size=tuple(data.image_size))))
  if data.test_set == 'official':
    dataset = moving_mnist.official_tfds_test_set(data.data_dir)
    return TestSet(None, lambda: _moving_mnist_frames(
        moving_mnist.official_tfds_chunks(dataset, length)))
  array = moving_mnist.load_official_npy(data.test_set, length)
  return TestSet(array.shape[1], lambda: _moving_mnist_frames(
      moving_mnist.official_npy_chunks(array, length)))


def create_test_iterator(config, batch_size=None):
  """One pass over `load_test_set(config)`, in batches of batch_size
  (default config.eval_batch_size): {'frames', 'valid'} (`TestSet.batches`).
  """
  return load_test_set(config).batches(batch_size or config.eval_batch_size)


def test_set_size(config):
  """Sequences in config's test set when the config (or the .npy header)
  tells, else None; for validation, before the set is loaded."""
  data = config.data
  if data.dataset != 'moving_mnist' or data.test_set == 'official':
    return None
  if data.test_set == 'generated':
    return data.num_test_sequences
  return moving_mnist.load_official_npy(data.test_set).shape[1]


def num_label_classes(config):
  """Classes of the dataset's action labels (ValueError if it has none)."""
  if config.data.dataset == 'moving_mnist':
    if config.data.test_set != 'generated':
      raise ValueError(
          f'config.data.test_set={config.data.test_set!r}: labelled Moving '
          "MNIST needs the digits' trajectories; use test_set='generated'")
    return len(moving_mnist.NEXT_WALL_CLASSES)
  if config.data.dataset == 'sthsth':
    return config.classifier.num_classes
  raise ValueError(f'config.data.dataset={config.data.dataset!r} has no '
                   "action labels; use 'sthsth' or 'moving_mnist'")


def create_labelled_train_iterator(config, *, num_devices=None, start_step=0,
                                   process_index=0, process_count=1):
  """Endless, resumable training batches with their action labels.

  The config is validated (`validate_data_config`, `num_label_classes`).

  Returns:
    Iterator of {'frames': float32 (num_devices, per_device_batch, T, H, W,
    C) in [0, 1], 'labels': int32 (num_devices, per_device_batch)}.
  """
  num_devices = num_devices or _local_device_count()
  host_batch = config.batch_size // process_count
  data = config.data
  if data.dataset == 'sthsth':
    from stau_jax.data import video  # pylint: disable=g-import-not-at-top
    dataset = video.sthsth_dataset(
        config, 'train', host_batch, seed=config.seed, train=True,
        process_index=process_index, process_count=process_count,
        start_element=start_step * host_batch)
    return ({'frames': batch['frames'],
             'labels': batch['label'].astype(np.int32)}
            for batch in pipeline.as_numpy_batches(dataset, num_devices))
  batches = moving_mnist.train_batches(
      _digit_bank(config, 'train'), seed=config.seed, batch_size=host_batch,
      num_digits=data.num_digits, total_length=data.total_length,
      image_size=tuple(data.image_size), start_step=start_step,
      process_index=process_index, input_length=data.input_length)
  return ({k: pipeline.split_for_devices(v, num_devices)
           for k, v in batch.items()} for batch in batches)


def load_labelled_test_set(config):
  """The `TestSet` of config's test frames with their action labels."""
  data = config.data
  if data.dataset == 'sthsth':
    from stau_jax.data import video  # pylint: disable=g-import-not-at-top
    return video.load_test_set(config, labelled=True)
  bank = _digit_bank(config, 'heldout')
  seed = data.get('test_seed', 1234)

  def chunks():
    for frames, labels in moving_mnist.labelled_test_set(
        bank, seed=seed, num_sequences=data.num_test_sequences,
        num_digits=data.num_digits, total_length=eval_total_length(config),
        image_size=tuple(data.image_size), input_length=data.input_length):
      yield {'frames': moving_mnist.to_float(frames), 'labels': labels}

  return TestSet(data.num_test_sequences, chunks)
