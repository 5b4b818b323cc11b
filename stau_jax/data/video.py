"""Reading videos for the real-video datasets: layouts, windows, tf.data.

The dataset modules (kitti.py, towncentre.py, sthsth.py, video_folder.py)
describe their layouts and build on what is here: readers of frame arrays
(.npy/.npz/.hkl), image folders and video files (`iterate_video`), the
windows a sequence takes (`sliding_windows`, `uniform_windows`), one tf.data
pipeline (`build_dataset`), the frame cache of slow-to-decode video files
(`cached_frames`) and the train / test entry points of a split function
(`train_batches`, `test_set`). Paths in config.data are joined to
config.data.data_dir when relative.

Frames are center-cropped to the target aspect ratio, resized to
config.data.image_size and scaled to [0, 1]. Image folders are decoded by
tf.data in parallel; .hkl files are read as plain HDF5 (h5py, never
unpickled); video files need PyAV (`pip install av`) or OpenCV
(`pip install opencv-python`).
TensorFlow is imported only when a pipeline is built.
"""
import dataclasses
import glob
import importlib.util
import os
import shutil
import tempfile

from absl import logging
import numpy as np

from stau_jax import errors
from stau_jax.data import pipeline

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
VIDEO_EXTENSIONS = ('.avi', '.mp4', '.webm', '.mkv', '.mov', '.mpg')
ARRAY_EXTENSIONS = ('.npy', '.npz', '.hkl')


@dataclasses.dataclass
class Frames:
  """A flat sequence of frames split into clips.

  Exactly one of `array` (N, H, W, C) uint8 and `paths` (N image files) is
  set; `clip_lengths` sums to N and clips are stored back to back. `videos`
  replaces both when every clip is a video file decoded on demand.
  """
  name: str
  clip_lengths: np.ndarray
  array: np.ndarray | None = None
  paths: list[str] | None = None
  videos: list[str] | None = None


def resolve_path(config, field):
  """config.data.<field> as a path, joined to data_dir when relative."""
  if field not in config.data:
    raise ValueError(f'The config has no data.{field}: set '
                     f'--config.data.{field}=PATH (see configs/ for the '
                     'fields of each dataset)')
  value = config.data[field]
  if value and not os.path.isabs(value) and config.data.data_dir:
    value = os.path.join(config.data.data_dir, value)
  return value


def require_path(path, what):
  if not path:
    raise ValueError(f'{what} is not set')
  if not os.path.exists(path):
    raise ValueError(f'{what}: {path} does not exist')
  return path


# Readers -------------------------------------------------------------------


# The hickle type names of the nodes `read_hkl` reads: arrays and lists or
# tuples of numbers or strings, as hickle 2 and 3 ('<class ...>' or
# '<type ...>' for lists), 4 and 5 name them.
HICKLE_ARRAY_TYPES = ('ndarray', 'np_dtype', 'list', 'tuple', "<class 'list'>",
                      "<type 'list'>", "<class 'tuple'>", "<type 'tuple'>")


def _hickle_type(file, node):
  """The hickle type name of `node`, read without unpickling: hickle 2/3's
  'type' attribute ([b'ndarray']), hickle 4's 'base_type', or hickle 5's
  reference to its types table. A hickle 5 node without one is pickled."""
  import h5py  # pylint: disable=g-import-not-at-top
  if 'base_type' in node.attrs:
    kind = node.attrs['base_type']
  elif isinstance(node.attrs.get('type'), h5py.Reference):
    entry = file[node.attrs['type']]
    kind = file[entry.attrs['base_type']].name.rsplit('/', 1)[-1]
  elif 'type' in node.attrs:
    kind = np.ravel(node.attrs['type'])[0]
  else:
    kind = 'pickle'
  return kind.decode() if isinstance(kind, bytes) else str(kind)


def read_hkl(path):
  """The array in a hickle file (PredNet's X_*.hkl, sources_*.hkl), read as
  plain HDF5 with h5py: never unpickled, so no file can run code.

  Reads hickle 2/3's root dataset 'data_0' and hickle 4/5's 'data' when it
  holds an array or a list of numbers or strings; memory-maps it when it is
  stored contiguously (PredNet's files), like .npy. Raises InputError for
  anything else (pickled Python objects, dicts, lists stored item by item).
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError('Reading .hkl files needs h5py', path,
                            'pip install h5py, or convert it to .npy') from e
  try:
    file = h5py.File(path, 'r')
  except OSError as e:
    raise errors.InputError(f'Not a readable HDF5 (hickle) file ({e})', path,
                            'pass PredNet\'s .hkl files or a .npy copy') from e
  with file:
    node = file.get('data', file.get('data_0'))
    kind = _hickle_type(file, node) if node is not None else None
    if (not isinstance(node, h5py.Dataset) or kind not in HICKLE_ARRAY_TYPES
        or node.dtype.kind not in 'biufS'):
      found = 'nothing' if node is None else (
          f'a {kind}' + ('' if isinstance(node, h5py.Dataset) else ' group'))
      raise errors.InputError(
          f'The hickle file holds {found}, not an array or a list of numbers '
          'or strings (stau_jax never unpickles)', path,
          'save the array with numpy.save and pass the .npy')
    offset = node.id.get_offset()
    if node.chunks is None and offset is not None and node.size:
      return np.memmap(path, node.dtype, 'r', offset, node.shape)
    return node[()]


def load_array(path):
  """Loads an array from .npy (memory-mapped), .npz (first array) or .hkl
  (`read_hkl`); nothing is unpickled."""
  extension = os.path.splitext(path)[1].lower()
  if extension == '.npy':
    return np.load(path, mmap_mode='r', allow_pickle=False)
  if extension == '.npz':
    with np.load(path, allow_pickle=False) as archive:
      return archive[archive.files[0]]
  if extension == '.hkl':
    return read_hkl(path)
  raise ValueError(f'{path}: expected one of {ARRAY_EXTENSIONS}')


def clip_lengths_from_sources(sources):
  """Lengths of the runs of equal consecutive entries of a sources list."""
  sources = np.asarray(sources)
  starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
  return np.diff(np.r_[starts, len(sources)])


def read_frame_arrays(frames_path, sources_path=''):
  """PredNet layout: frames (N, H, W, C) uint8 and an optional sources list."""
  frames = load_array(frames_path)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise ValueError(f'{frames_path}: expected frames (N, height, width, 1 or '
                     f'3 channels), got shape {frames.shape}')
  if frames.dtype != np.uint8:
    raise ValueError(f'{frames_path}: expected uint8 frames, got '
                     f'{frames.dtype}')
  if sources_path:
    sources = load_array(sources_path)
    if len(sources) != len(frames):
      raise ValueError(f'{sources_path}: has {len(sources)} entries but '
                       f'{frames_path} has {len(frames)} frames; expected one '
                       'source (clip name) per frame')
    lengths = clip_lengths_from_sources(sources)
  else:
    lengths = np.array([len(frames)])
  return Frames(frames_path, lengths, array=frames)


def image_files(folder):
  return sorted(f for f in glob.glob(os.path.join(folder, '*'))
                if f.lower().endswith(IMAGE_EXTENSIONS))


def read_image_folder(folder):
  """One folder of frames (sorted by name) as a single clip."""
  paths = image_files(folder)
  if not paths:
    raise ValueError(f'{folder}: no image files ({", ".join(IMAGE_EXTENSIONS)})')
  return Frames(folder, np.array([len(paths)]), paths=paths)


def read_clip_folders(root, clip_names=None):
  """A folder of per-clip image folders; `clip_names` picks and orders them."""
  if clip_names is None:
    clip_names = sorted(d for d in os.listdir(root)
                        if os.path.isdir(os.path.join(root, d)))
  paths, lengths = [], []
  for name in clip_names:
    files = image_files(os.path.join(root, name))
    paths.extend(files)
    lengths.append(len(files))
  if not paths:
    raise ValueError(f'{root}: expected sub-folders of image frames, found '
                     'none')
  return Frames(root, np.array(lengths), paths=paths)


def read_frames(path, sources_path=''):
  """Dispatches on the layout: array file, folder of frames, clip folders."""
  if os.path.isfile(path):
    return read_frame_arrays(path, sources_path)
  if image_files(path):
    return read_image_folder(path)
  return read_clip_folders(path)


def video_backend():
  """'av' (PyAV) or else 'cv2' (OpenCV), whichever is installed.

  Raises ImportError saying what to install when neither is.
  """
  for module in ('av', 'cv2'):
    if importlib.util.find_spec(module) is not None:
      return module
  raise errors.MissingPackageError('Decoding video files needs PyAV (pip install av) or '
                    'OpenCV (pip install opencv-python); or extract the frames '
                    'into image folders (e.g. with ffmpeg) and point the config '
                    'at them.')


def iterate_video(path):
  """Yields the frames of a video file as uint8 (H, W, 3), one at a time."""
  if video_backend() == 'av':
    import av  # pylint: disable=g-import-not-at-top
    with av.open(path) as container:
      for frame in container.decode(video=0):
        yield frame.to_ndarray(format='rgb24')
    return
  import cv2  # pylint: disable=g-import-not-at-top
  capture = cv2.VideoCapture(path)
  try:
    ok, frame = capture.read()
    while ok:
      yield np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB.
      ok, frame = capture.read()
  finally:
    capture.release()


def decode_video(path):
  """Every frame of a video file: uint8 (T, H, W, 3)."""
  return np.stack(list(iterate_video(path)))


# Windows -------------------------------------------------------------------


def sliding_windows(clip_lengths, length, stride, name):
  """Frame indices (W, length) of windows that stay inside one clip.

  Clips shorter than `length` give no window (logged); no window at all is an
  error naming `name`.
  """
  offsets = np.r_[0, np.cumsum(clip_lengths)[:-1]]
  starts = [offset + np.arange(0, size - length + 1, stride)
            for offset, size in zip(offsets, clip_lengths) if size >= length]
  short = int(np.sum(np.asarray(clip_lengths) < length))
  if short:
    logging.warning('%s: %d of %d clips are shorter than %d frames and are '
                    'skipped.', name, short, len(clip_lengths), length)
  if not starts:
    raise ValueError(f'{name}: no clip has the {length} frames a sequence '
                     f'needs (clip lengths {list(clip_lengths)[:10]}...)')
  starts = np.concatenate(starts)
  return starts[:, None] + np.arange(length)


def uniform_windows(clip_lengths, length, name):
  """One window per clip: `length` frames spread evenly over the clip."""
  if np.min(clip_lengths) < length:
    shortest = int(np.argmin(clip_lengths))
    raise ValueError(f'{name}: clip #{shortest} has {clip_lengths[shortest]} '
                     f'frames, fewer than the {length} each sequence needs')
  offsets = np.r_[0, np.cumsum(clip_lengths)[:-1]]
  return np.stack([
      offset + np.linspace(0, size - 1, length).round().astype(np.int64)
      for offset, size in zip(offsets, clip_lengths)])


# tf.data -------------------------------------------------------------------


def crop_and_resize(frames, image_size, center_crop=True):
  """Center-crops uint8 frames (T, h, w, C) to the aspect of `image_size`
  (unless `center_crop` is False: then the aspect changes), resizes them to
  it and scales to float32 [0, 1]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width = image_size
  if center_crop:
    shape = tf.shape(frames)
    h, w = shape[1], shape[2]
    crop_h = tf.minimum(h, tf.cast(tf.round(
        tf.cast(w, tf.float32) * height / width), tf.int32))
    crop_w = tf.minimum(w, tf.cast(tf.round(
        tf.cast(h, tf.float32) * width / height), tf.int32))
    top = (h - crop_h) // 2
    left = (w - crop_w) // 2
    frames = frames[:, top:top + crop_h, left:left + crop_w]
  frames = tf.image.convert_image_dtype(frames, tf.float32)
  resized = tf.image.resize(frames, (height, width), antialias=True)
  return tf.clip_by_value(resized, 0.0, 1.0)


def _frame_loader(frames, channels):
  """tf function: frame indices (T,) -> uint8 frames (T, h, w, C)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if frames.array is not None:
    array = frames.array

    def gather(indices):
      return np.ascontiguousarray(array[indices])
    return lambda indices: tf.numpy_function(gather, [indices], tf.uint8)
  if frames.paths is not None:
    paths = tf.constant(frames.paths)

    def decode(path):
      return tf.io.decode_image(tf.io.read_file(path), channels=channels,
                                expand_animations=False)
    return lambda indices: tf.map_fn(
        decode, tf.gather(paths, indices),
        fn_output_signature=tf.TensorSpec((None, None, channels), tf.uint8))
  videos = frames.videos

  def decode_clip(clip, length):
    video = decode_video(videos[int(clip)])
    if len(video) < length:
      raise ValueError(f'{videos[int(clip)]}: {len(video)} frames, fewer than '
                       f'the {length} each sequence needs')
    picks = np.linspace(0, len(video) - 1, int(length)).round().astype(int)
    return video[picks]
  return lambda indices: tf.numpy_function(
      decode_clip, [indices[0], tf.size(indices)], tf.uint8)


def build_dataset(frames, windows, config, *, batch_size, seed=0,
                  train=True, process_index=0, process_count=1,
                  start_element=0, labels=None):
  """Batched tf.data.Dataset of float32 (B, T, H, W, C) frames.

  Args:
    frames: the `Frames` to read.
    windows: int (W, T) frame indices of every sequence.
    config: experiment config (image_size, channels, center_crop: True when
      absent).
    batch_size: B (per host).
    seed: shuffle seed.
    train: shuffle + repeat + drop_remainder when True; one ordered pass
      otherwise (last batch smaller).
    process_index, process_count: host shard.
    start_element: this host's sequences to skip (resume).
    labels: optional int (W,); then elements are {'frames', 'label'}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image_size = tuple(config.data.image_size)
  channels = config.data.channels
  center_crop = config.data.center_crop
  length = windows.shape[1]
  windows_t = tf.constant(windows, tf.int64)
  labels_t = None if labels is None else tf.constant(labels, tf.int64)
  load = _frame_loader(frames, channels)

  def make(index):
    clip = load(tf.gather(windows_t, index))
    clip = tf.ensure_shape(clip, (length, None, None, channels))
    clip = tf.ensure_shape(crop_and_resize(clip, image_size, center_crop),
                           (length,) + image_size + (channels,))
    if labels_t is None:
      return clip
    return {'frames': clip, 'label': tf.gather(labels_t, index)}

  dataset = pipeline.window_index_dataset(
      len(windows), seed=seed, process_index=process_index,
      process_count=process_count, start_element=start_element,
      shuffle=train, repeat=train)
  dataset = dataset.map(make, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=train)
  return dataset.with_options(pipeline.deterministic_options())


# Datasets ------------------------------------------------------------------


def extract_frames(video_path, folder):
  """Writes every frame of a video file as folder/%06d.png (needs a decoder).

  Returns the number of frames written.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  count = 0
  for count, frame in enumerate(iterate_video(video_path), 1):
    # compress_level=1: lossless and several times faster than the default.
    Image.fromarray(frame).save(os.path.join(folder, f'{count - 1:06d}.png'),
                                compress_level=1)
    if count % 500 == 0:
      logging.info('%s: extracted %d frames.', video_path, count)
  return count


def _frames_cache_candidates(video_path, data_dir):
  """Cache folders for a video file: next to it, then under data_dir."""
  name = os.path.basename(video_path) + '.frames'
  candidates = [video_path + '.frames']
  if data_dir and os.path.abspath(os.path.join(data_dir, name)) != (
      os.path.abspath(candidates[0])):
    candidates.append(os.path.join(data_dir, name))
  return candidates


def cached_frames(video_path, data_dir=''):
  """Folder of the frames of `video_path`, decoding it once on first use.

  Uses an existing `<video_path>.frames/` or `<data_dir>/<name>.frames/`;
  otherwise decodes the video into the first of them whose parent is
  writable, through a temporary folder renamed when complete (an interrupted
  extraction leaves no cache).
  """
  candidates = _frames_cache_candidates(video_path, data_dir)
  for folder in candidates:
    if os.path.isdir(folder):
      logging.info('%s: reading the frames cached in %s.', video_path, folder)
      if os.path.getmtime(video_path) > os.path.getmtime(folder):
        logging.warning('%s is newer than its frames cache %s; delete the '
                        'cache to decode the video again.', video_path, folder)
      return folder
  video_backend()  # Fail now, saying what to install, when there is none.
  writable = [f for f in candidates
              if os.access(os.path.dirname(os.path.abspath(f)), os.W_OK)]
  if not writable:
    raise ValueError(f'{video_path}: cannot cache its frames, none of '
                     f'{candidates} is writable; extract them elsewhere with '
                     'stau_jax.data.video.extract_frames and set '
                     'config.data.video_path to that folder.')
  folder = writable[0]
  parent = os.path.dirname(os.path.abspath(folder))
  logging.info('%s: decoding the video once into %s (first use).',
               video_path, folder)
  temporary = tempfile.mkdtemp(prefix=os.path.basename(folder) + '.partial-',
                               dir=parent)
  try:
    try:
      count = extract_frames(video_path, temporary)
    except ImportError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{video_path}: could not decode the video ({e})') from e
    if not count:
      raise ValueError(f'{video_path}: decoded no frames')
    try:
      os.rename(temporary, folder)
    except OSError:
      if not os.path.isdir(folder):  # Else another process finished first.
        raise
  finally:
    if os.path.isdir(temporary):
      shutil.rmtree(temporary, ignore_errors=True)
  logging.info('%s: cached %d frames in %s.', video_path, count, folder)
  return folder


def validate_paths(config, required, optional=()):
  """Raises ValueError when a `required` path field of config.data is unset
  or missing, or an `optional` one is set but missing; checks channels."""
  for field in required:
    require_path(resolve_path(config, field), f'config.data.{field}')
  for field in optional:
    if resolve_path(config, field):
      require_path(resolve_path(config, field), f'config.data.{field}')
  if config.data.channels not in (1, 3):
    raise ValueError(f'config.data.channels={config.data.channels} must be 1 '
                     'or 3')


def _read_split(split, config, name, labelled):
  """split(config, name), refused when `labelled` and it has no labels."""
  frames, windows, labels = split(config, name)
  if labelled and labels is None:
    raise ValueError(f'{frames.name}: config.data.dataset='
                     f'{config.data.dataset!r} has no action labels')
  return frames, windows, labels


def train_batches(split, config, *, seed, num_devices, start_step=0,
                  process_index=0, process_count=1, labelled=False):
  """Endless float32 (num_devices, per_device, T, H, W, C) batches of a
  dataset's `split(config, 'train')` -> (Frames, windows, labels or None);
  with `labelled`, dicts {'frames', 'labels': int32 (num_devices,
  per_device)}."""
  host_batch = config.batch_size // process_count
  frames, windows, labels = _read_split(split, config, 'train', labelled)
  logging.info('%s train: %d sequences of %d frames.', frames.name,
               len(windows), windows.shape[1])
  dataset = build_dataset(
      frames, windows, config, batch_size=host_batch, seed=seed, train=True,
      process_index=process_index, process_count=process_count,
      start_element=start_step * host_batch,
      labels=labels if labelled else None)
  batches = pipeline.as_numpy_batches(dataset, num_devices)
  if not labelled:
    return batches
  return ({'frames': batch['frames'],
           'labels': batch['label'].astype(np.int32)} for batch in batches)


def test_set(split, config, labelled=False):
  """The `pipeline.TestSet` of `split(config, 'test')` (see `train_batches`),
  its frames indexed and its tf.data pipeline built once; with `labelled`,
  chunks carry 'labels'."""
  frames, windows, labels = _read_split(split, config, 'test', labelled)
  dataset = build_dataset(frames, windows, config,
                          batch_size=config.eval_batch_size, train=False,
                          labels=labels if labelled else None)

  def chunks():
    for batch in pipeline.as_numpy_batches(dataset, 1):
      if labelled:
        yield {'frames': batch['frames'][0],
               'labels': batch['label'][0].astype(np.int32)}
      else:
        yield {'frames': batch[0]}

  return pipeline.TestSet(len(windows), chunks, source=frames.name)
