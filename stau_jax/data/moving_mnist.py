"""Moving MNIST: the endless training stream and the test sets.

The generator follows the original script (Srivastava et al. 2015, as used by
ConvLSTM-PyTorch and the paper): each digit starts at a uniform position in
the free part of the canvas with a uniform direction, moves 0.1 of the free
canvas per frame (the position is advanced before the first frame is drawn),
bounces off the edges, and digits are merged by a per-pixel max; frames are
uint8 / 255. On a 64x64 canvas digits are 28x28; other canvas sizes scale the
digits by the same 28/64 share.

Everything is batched numpy, so it runs where TensorFlow is not installed.
Training batch `k` is a pure function of (seed, process_index, k), which makes
the stream resumable from any step.

Labelled sequences for early action recognition (`next_wall_labels`): the
label of a sequence is the wall its first digit bounces off next after the
observed frames, something only the unseen frames show.

The last section is the dataset's entry in the registry (stau_jax/data):
config.data.digits picks the digits (`mnist_digits`), config.data.test_set
the test set: 'generated' (num_test_sequences drawn with test_seed from
held-out digits), 'official' (TFDS moving_mnist) or the path of
mnist_test_seq.npy.
"""
import functools
import os
import queue
import threading

from absl import logging
import numpy as np

from stau_jax import errors
from stau_jax.data import mnist_digits
from stau_jax.data import pipeline

STEP_LENGTH = 0.1
TEST_CHUNK = 100  # Sequences drawn per seed in the generated test set.
PREFETCH = 2  # Training batches made ahead on a background thread.
# Classes of `next_wall_labels`, in label order.
NEXT_WALL_CLASSES = ('top', 'bottom', 'left', 'right', 'none')


def digit_size_for(image_size):
  """Digit side for a canvas (H, W): 28 on 64x64, scaled otherwise."""
  return max(1, round(28 * min(image_size) / 64))


def trajectories(rng, shape, total_length, step_length=STEP_LENGTH):
  """Bouncing positions of the original generator, as fractions in [0, 1].

  Args:
    rng: numpy Generator.
    shape: leading shape, e.g. (batch, num_digits).
    total_length: number of frames T.
    step_length: displacement per frame as a fraction of the free canvas.

  Returns:
    (y, x), each float64 of shape shape + (T,), in [0, 1].
  """
  y = rng.random(shape)
  x = rng.random(shape)
  theta = rng.random(shape) * 2 * np.pi
  velocity_y = np.sin(theta)
  velocity_x = np.cos(theta)
  ys = np.empty(shape + (total_length,))
  xs = np.empty(shape + (total_length,))
  for t in range(total_length):
    y = y + velocity_y * step_length
    x = x + velocity_x * step_length
    velocity_y = np.where((y <= 0) | (y >= 1), -velocity_y, velocity_y)
    velocity_x = np.where((x <= 0) | (x >= 1), -velocity_x, velocity_x)
    y = np.clip(y, 0.0, 1.0)
    x = np.clip(x, 0.0, 1.0)
    ys[..., t] = y
    xs[..., t] = x
  return ys, xs


def render(digits, tops, lefts, image_size):
  """Draws digits onto blank canvases, merging overlaps by per-pixel max.

  Args:
    digits: uint8 (B, D, s, s), the digit images of every sequence.
    tops: int (B, D, T) top rows of the digits.
    lefts: int (B, D, T) left columns of the digits.
    image_size: canvas (H, W).

  Returns:
    uint8 (B, T, H, W).
  """
  batch, num_digits, size, _ = digits.shape
  total_length = tops.shape[-1]
  height, width = image_size
  canvas = np.zeros(batch * total_length * height * width, np.uint8)
  frame_offsets = np.arange(batch * total_length).reshape(
      batch, total_length) * (height * width)
  patch_offsets = (np.arange(size)[:, None] * width + np.arange(size)[None, :])
  for d in range(num_digits):
    corner = frame_offsets + tops[:, d] * width + lefts[:, d]  # (B, T)
    index = corner[:, :, None, None] + patch_offsets  # (B, T, s, s)
    pixels = np.broadcast_to(digits[:, d, None], index.shape)
    canvas[index] = np.maximum(canvas[index], pixels)
  return canvas.reshape(batch, total_length, height, width)


def generate(rng, digit_bank, batch_size, num_digits, total_length,
             image_size=(64, 64)):
  """Draws a batch of Moving MNIST sequences.

  Args:
    rng: numpy Generator.
    digit_bank: uint8 (N, s, s) digits, already at the canvas' digit size.
    batch_size: number of sequences B.
    num_digits: digits per sequence D.
    total_length: frames per sequence T.
    image_size: canvas (H, W).

  Returns:
    uint8 (B, T, H, W) frames (divide by 255 for [0, 1]).
  """
  return generate_with_positions(rng, digit_bank, batch_size, num_digits,
                                 total_length, image_size)[0]


def generate_with_positions(rng, digit_bank, batch_size, num_digits,
                            total_length, image_size=(64, 64)):
  """`generate`'s frames and the trajectories they were drawn from.

  Returns:
    (frames uint8 (B, T, H, W), (ys, xs)): the `trajectories` of the digits,
    float64 (B, D, T) fractions of the free canvas (0: top or left wall, 1:
    bottom or right wall).
  """
  size = digit_bank.shape[-1]
  height, width = image_size
  if size > min(height, width):
    raise ValueError(f'digits of {size}x{size} do not fit a {image_size} canvas')
  choice = rng.integers(0, len(digit_bank), (batch_size, num_digits))
  ys, xs = trajectories(rng, (batch_size, num_digits), total_length)
  tops = (ys * (height - size)).astype(np.int64)
  lefts = (xs * (width - size)).astype(np.int64)
  return render(digit_bank[choice], tops, lefts, image_size), (ys, xs)


def next_wall_labels(ys, xs, input_length):
  """The wall the first digit bounces off next, after the observed frames.

  The labelling rule of the early action recognition demo: look at digit 0
  in the unseen frames t = input_length .. T-1, find the first frame where
  it touches a wall (its trajectory is exactly 0 or 1, which is where the
  generator reverses its velocity) and name that wall: 0 top (y = 0),
  1 bottom (y = 1), 2 left (x = 0), 3 right (x = 1); in a corner the first
  of this order. 4 ('none') when it touches no wall in those frames. See
  NEXT_WALL_CLASSES.

  Args:
    ys, xs: float (B, D, T) trajectories (`generate_with_positions`).
    input_length: observed frames.

  Returns:
    int32 (B,) labels in [0, 5).
  """
  y, x = ys[:, 0, input_length:], xs[:, 0, input_length:]
  hits = np.stack([y == 0, y == 1, x == 0, x == 1], axis=-1)  # (B, T', 4)
  any_hit = hits.any(axis=-1)
  first = np.argmax(any_hit, axis=-1)  # first frame with a hit
  wall = np.argmax(hits[np.arange(len(y)), first], axis=-1)
  return np.where(any_hit.any(axis=-1), wall,
                  len(NEXT_WALL_CLASSES) - 1).astype(np.int32)


def generate_labelled(rng, digit_bank, batch_size, num_digits, total_length,
                      image_size, input_length):
  """uint8 frames (B, T, H, W) and their int32 `next_wall_labels` (B,)."""
  frames, (ys, xs) = generate_with_positions(
      rng, digit_bank, batch_size, num_digits, total_length, image_size)
  return frames, next_wall_labels(ys, xs, input_length)


def to_float(frames):
  """uint8 (..., H, W) -> float32 (..., H, W, 1) in [0, 1]."""
  return (frames.astype(np.float32) * np.float32(1 / 255))[..., None]


def train_batch(digit_bank, step, *, seed, process_index, batch_size,
                num_digits, total_length, image_size):
  """Training batch number `step`: float32 (B, T, H, W, 1), a pure function of
  (seed, process_index, step) for a given digit bank."""
  rng = np.random.default_rng([seed, process_index, step])
  return to_float(generate(rng, digit_bank, batch_size, num_digits,
                           total_length, image_size))


def labelled_train_batch(digit_bank, step, *, seed, process_index,
                         batch_size, num_digits, total_length, image_size,
                         input_length):
  """`train_batch`'s sequences with labels: {'frames': float32 (B, T, H, W,
  1), 'labels': int32 (B,)} (`generate_labelled`)."""
  rng = np.random.default_rng([seed, process_index, step])
  frames, labels = generate_labelled(rng, digit_bank, batch_size, num_digits,
                                     total_length, image_size, input_length)
  return {'frames': to_float(frames), 'labels': labels}


def train_stream(digit_bank, *, seed, batch_size, num_digits, total_length,
                 image_size, start_step=0, process_index=0,
                 input_length=None):
  """Endless iterator of training batches float32 (B, T, H, W, 1).

  Batches are made PREFETCH ahead on a background thread (numpy releases
  the GIL in its kernels, so this overlaps with the training step). With
  `input_length`, the batches are `labelled_train_batch`es instead.
  """
  def make(step):
    make_batch = (train_batch if input_length is None else functools.partial(
        labelled_train_batch, input_length=input_length))
    return make_batch(
        digit_bank, step, seed=seed, process_index=process_index,
        batch_size=batch_size, num_digits=num_digits,
        total_length=total_length, image_size=image_size)

  yield from _threaded(make, start_step, PREFETCH)


def _threaded(make, start_step, depth):
  """Yields make(start_step), make(start_step + 1), ... built on a thread."""
  buffer = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def worker():
    step = start_step
    while not stop.is_set():
      batch = make(step)
      while not stop.is_set():
        try:
          buffer.put(batch, timeout=0.1)
          break
        except queue.Full:
          continue
      step += 1

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      yield buffer.get()
  finally:
    stop.set()


def generated_test_set(digit_bank, *, seed, num_sequences, num_digits,
                       total_length, image_size):
  """Yields the fixed generated test set in chunks of uint8 (n, T, H, W).

  Chunk c holds sequences [c * 100, (c + 1) * 100) drawn with seed (seed, c),
  so the set does not depend on the evaluation batch size.
  """
  for chunk, start in enumerate(range(0, num_sequences, TEST_CHUNK)):
    count = min(TEST_CHUNK, num_sequences - start)
    rng = np.random.default_rng([seed, chunk])
    yield generate(rng, digit_bank, count, num_digits, total_length, image_size)


def labelled_test_set(digit_bank, *, seed, num_sequences, num_digits,
                      total_length, image_size, input_length):
  """Yields `generated_test_set`'s chunks with labels: (uint8 (n, T, H, W),
  int32 (n,)) (`generate_labelled`)."""
  for chunk, start in enumerate(range(0, num_sequences, TEST_CHUNK)):
    count = min(TEST_CHUNK, num_sequences - start)
    rng = np.random.default_rng([seed, chunk])
    yield generate_labelled(rng, digit_bank, count, num_digits, total_length,
                            image_size, input_length)


def load_official_npy(path, total_length=20):
  """Memory-maps the official mnist_test_seq.npy: uint8 (20, N, 64, 64).

  Raises ValueError unless it is readable, in that layout, and holds at
  least total_length frames per sequence.
  """
  try:
    array = np.load(path, mmap_mode='r', allow_pickle=False)
  except (OSError, ValueError, EOFError) as error:
    raise ValueError(f'{path}: cannot read as a .npy array ({error})') from error
  if array.dtype != np.uint8 or array.ndim != 4 or array.shape[2:] != (64, 64):
    raise ValueError(
        f'{path}: expected the official Moving MNIST layout uint8 (20, N, 64, '
        f'64) (time, sequence, height, width), got {array.dtype} {array.shape}')
  if total_length > array.shape[0]:
    raise ValueError(f'{path}: has {array.shape[0]} frames per sequence, the '
                     f'config needs total_length={total_length}')
  return array


def official_npy_chunks(array, total_length):
  """Yields uint8 (n, T, 64, 64) chunks of an official-layout array
  (`load_official_npy`)."""
  for start in range(0, array.shape[1], TEST_CHUNK):
    yield np.ascontiguousarray(
        array[:total_length, start:start + TEST_CHUNK].transpose(1, 0, 2, 3))


def official_tfds_test_set(data_dir):
  """TFDS `moving_mnist`'s test split as a tf.data.Dataset of TEST_CHUNK
  sequences (read with `official_tfds_chunks`).

  Needs TensorFlow; downloads the set only when it is not prepared and the
  network is reachable.
  """
  if not mnist_digits.tensorflow_available():
    raise errors.MissingPackageError("config.data.test_set='official' reads TFDS "
                      'moving_mnist, which needs TensorFlow; pass the path of '
                      'mnist_test_seq.npy instead.')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('moving_mnist', data_dir=data_dir or None)
  if not builder.data_path.exists():
    if not mnist_digits.network_available():
      raise FileNotFoundError(
          f'TFDS moving_mnist is not prepared in {builder.data_dir} and there '
          'is no network; set config.data.test_set to the path of '
          'mnist_test_seq.npy (from http://www.cs.toronto.edu/~nitish/'
          'unsupervised_video/).')
    builder.download_and_prepare()
  return builder.as_dataset(split='test').batch(TEST_CHUNK)


def official_tfds_chunks(dataset, total_length):
  """Yields uint8 (n, T, 64, 64) chunks of `official_tfds_test_set`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for example in tfds.as_numpy(dataset):
    yield example['image_sequence'][:, :total_length, ..., 0]


# The dataset plug-in ---------------------------------------------------------

DIGIT_SOURCES = ('auto', 'tfds', 'bundled')
# config.data fields a run must keep when it resumes: its training digits.
RESUME_FIELDS = ('digits',)


def validate(config):
  """Raises ValueError for a bad Moving MNIST setting; resolves
  data.digits='auto' in place to the source used ('tfds' or 'bundled')."""
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
  length = pipeline.eval_total_length(config)
  if data.test_set not in ('official', 'generated'):
    path = data.test_set
    if not path.endswith('.npy'):
      raise ValueError(
          f"config.data.test_set={path!r} must be 'official', 'generated' or "
          'the path of an .npy file in the official layout uint8 (20, N, 64, '
          '64)')
    if not os.path.isfile(path):
      raise ValueError(f'config.data.test_set: file {path} does not exist'
                       + (' (it is a directory)' if os.path.isdir(path)
                          else ''))
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
    if length > 20:
      raise ValueError(
          f'test_total_length={length}: the official Moving MNIST test set '
          'has 20 frames per sequence')
  data.digits = mnist_digits.resolve_source(data.digits, data.data_dir)


def _digit_bank(config, split):
  """uint8 digits (N, s, s) of `split`, resized for the canvas."""
  digits, _ = mnist_digits.load_digits(config.data.digits, split,
                                       config.data.data_dir)
  return mnist_digits.resize_digits(
      digits, digit_size_for(tuple(config.data.image_size)))


def train_batches(config, *, seed, num_devices, start_step=0, process_index=0,
                  process_count=1, labelled=False):
  """Endless float32 (num_devices, per_device, T, H, W, 1) batches drawn from
  the training digits (`train_stream`); with `labelled`, dicts {'frames',
  'labels': int32 (num_devices, per_device)} (`next_wall_labels`)."""
  data = config.data
  batches = train_stream(
      _digit_bank(config, 'train'), seed=seed,
      batch_size=config.batch_size // process_count,
      num_digits=data.num_digits, total_length=data.total_length,
      image_size=tuple(data.image_size), start_step=start_step,
      process_index=process_index,
      input_length=data.input_length if labelled else None)
  if not labelled:
    return (pipeline.split_for_devices(batch, num_devices)
            for batch in batches)
  return ({k: pipeline.split_for_devices(v, num_devices)
           for k, v in batch.items()} for batch in batches)


def test_set(config, labelled=False):
  """The `pipeline.TestSet` of config.data.test_set; with `labelled` (only
  'generated'), chunks carry the `next_wall_labels`."""
  data = config.data
  length = pipeline.eval_total_length(config)
  if data.test_set == 'generated':
    bank = _digit_bank(config, 'heldout')
    seed = data.test_seed
    logging.info('Generated Moving MNIST test set: %d sequences, seed %d.',
                 data.num_test_sequences, seed)
    shape = dict(num_sequences=data.num_test_sequences,
                 num_digits=data.num_digits, total_length=length,
                 image_size=tuple(data.image_size))

    def chunks():
      if labelled:
        for frames, labels in labelled_test_set(
            bank, seed=seed, input_length=data.input_length, **shape):
          yield {'frames': to_float(frames), 'labels': labels}
      else:
        for frames in generated_test_set(bank, seed=seed, **shape):
          yield {'frames': to_float(frames)}

    return pipeline.TestSet(
        data.num_test_sequences, chunks,
        source=f'generated from {data.digits} held-out digits', seed=seed)
  if labelled:
    num_label_classes(config)  # Raises, naming the fix.
  if data.test_set == 'official':
    dataset = official_tfds_test_set(data.data_dir)
    return pipeline.TestSet(None, lambda: (
        {'frames': to_float(frames)}
        for frames in official_tfds_chunks(dataset, length)),
                            source='tfds moving_mnist test split')
  array = load_official_npy(data.test_set, length)
  return pipeline.TestSet(array.shape[1], lambda: (
      {'frames': to_float(frames)}
      for frames in official_npy_chunks(array, length)),
                          source=data.test_set)


def test_set_size(config):
  """Sequences of config's test set, or None when only a pass tells."""
  data = config.data
  if data.test_set == 'official':
    return None
  if data.test_set == 'generated':
    return data.num_test_sequences
  return load_official_npy(data.test_set,
                           pipeline.eval_total_length(config)).shape[1]


def num_label_classes(config):
  """Classes of `next_wall_labels` (ValueError unless the set is generated)."""
  if config.data.test_set != 'generated':
    raise ValueError(
        f'config.data.test_set={config.data.test_set!r}: labelled Moving '
        "MNIST needs the digits' trajectories; use test_set='generated'")
  return len(NEXT_WALL_CLASSES)
