"""Your own videos: a folder of video files or of frame folders.

Layout (config.data.data_dir): video files (.mp4, .avi, .mov, .webm, .mkv,
.mpg; decoded with PyAV, or OpenCV when PyAV is missing) and/or folders of
frames (image files sorted by name), each one clip. A video file is decoded
once, on first use, into a PNG frame cache `<video>.frames/` beside it
(`video.cached_frames`, with progress lines); later runs read the cache.

Sequences of total_length frames (test: test_total_length) take every
`frame_stride`-th frame of one clip and start every `clip_stride` frames
(the test set: consecutive disjoint sequences); they never cross clips.
Frames are center-cropped to the aspect of image_size (unless center_crop is
False) and resized to it, RGB (channels=3) or gray (channels=1).

The split: `test.txt` in data_dir lists the test clips' names (one a line;
`train.txt`, when present, the training ones, else every other clip);
without it, the `test_fraction` of the clips whose names hash first
(sha1) test, at least one: the same names always give the same split.
Unreadable or too short clips are named together in one error, or skipped
with a warning when skip_bad_files is True.
"""
import hashlib
import math
import os

from absl import logging
import numpy as np

from stau_jax.data import pipeline
from stau_jax.data import video

SPLIT_FILES = {'train': 'train.txt', 'test': 'test.txt'}


def _is_cache(root, name):
  """True for `video.cached_frames` folders (complete or partial)."""
  stem, _, rest = name.partition('.frames')
  return ((name.endswith('.frames') and os.path.isfile(os.path.join(root,
                                                                     stem)))
          or rest.startswith('.partial-'))


def list_clips(root):
  """Sorted names of the video files and frame folders in `root`."""
  names = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if os.path.isfile(path) and name.lower().endswith(video.VIDEO_EXTENSIONS):
      names.append(name)
    elif (os.path.isdir(path) and not _is_cache(root, name) and
          video.image_files(path)):
      names.append(name)
  return names


def _read_list(path, names):
  with open(path) as f:
    listed = [line.strip() for line in f if line.strip()]
  unknown = [name for name in listed if name not in names]
  if unknown:
    raise ValueError(f'{path}: lists {unknown[:5]}, not video files or frame '
                     'folders of that folder')
  return listed


def split_clips(root, test_fraction):
  """{'train': names, 'test': names} of the clips in `root` (module doc)."""
  names = list_clips(root)
  if not names:
    raise ValueError(f'{root}: no video files ({", ".join(video.VIDEO_EXTENSIONS)}) '
                     'or folders of frames; set config.data.data_dir to the '
                     'folder of your videos')
  test_list = os.path.join(root, SPLIT_FILES['test'])
  if os.path.isfile(test_list):
    test = _read_list(test_list, names)
    train_list = os.path.join(root, SPLIT_FILES['train'])
    train = (_read_list(train_list, names) if os.path.isfile(train_list) else
             [name for name in names if name not in test])
  else:
    if len(names) < 2:
      raise ValueError(f'{root}: has one clip ({names[0]}); a train/test '
                       'split needs two, or a test.txt naming the test clips')
    ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    count = min(len(names) - 1, max(1, math.ceil(test_fraction * len(names))))
    test = sorted(ranked[:count])
    train = [name for name in names if name not in test]
  for split, chosen in (('train', train), ('test', test)):
    if not chosen:
      raise ValueError(f'{root}: no {split} clips; list some in '
                       f'{SPLIT_FILES[split]}')
  return {'train': train, 'test': test}


def _frame_paths(root, name):
  """Image files of clip `name`, decoding a video into its cache first."""
  path = os.path.join(root, name)
  if os.path.isfile(path):
    path = video.cached_frames(path, root)
  return video.image_files(path)


def validate(config):
  """Raises ValueError when data_dir has no clips to split, or a field is
  out of range."""
  data = config.data
  root = video.require_path(data.data_dir, 'config.data.data_dir')
  for name in ('frame_stride', 'clip_stride'):
    if not isinstance(data[name], int) or data[name] < 1:
      raise ValueError(f'config.data.{name}={data[name]!r} must be a '
                       'positive integer')
  if not 0 < data.test_fraction < 1:
    raise ValueError(f'config.data.test_fraction={data.test_fraction} must be '
                     'between 0 and 1')
  video.validate_paths(config, ())
  split_clips(root, data.test_fraction)


def load_split(config, split):
  """(Frames, windows (W, T), None) of the 'train' or 'test' clips."""
  data = config.data
  root = data.data_dir
  names = split_clips(root, data.test_fraction)[split]
  length = (data.total_length if split == 'train' else
            pipeline.eval_total_length(config))
  paths, lengths, bad = [], [], []
  for name in names:
    try:
      files = _frame_paths(root, name)[::data.frame_stride]
    except ValueError as error:
      bad.append(f'{name} ({error})')
      continue
    if len(files) < length:
      bad.append(f'{name} ({len(files)} frames at frame_stride '
                 f'{data.frame_stride}, fewer than the {length} a sequence '
                 'needs)')
      continue
    paths.extend(files)
    lengths.append(len(files))
  if bad and not data.skip_bad_files:
    raise ValueError(
        f'{root}: {len(bad)} {split} clip(s) cannot be used: '
        f'{"; ".join(bad)}. Fix or remove them, or pass '
        '--config.data.skip_bad_files=True to skip them')
  if not lengths:
    raise ValueError(f'{root}: none of the {split} clips can be used: '
                     f'{"; ".join(bad)}')
  if bad:
    logging.warning('%s: skipping %d %s clip(s): %s', root, len(bad), split,
                    '; '.join(bad))
  frames = video.Frames(root, np.array(lengths), paths=paths)
  stride = data.clip_stride if split == 'train' else length
  return frames, video.sliding_windows(frames.clip_lengths, length, stride,
                                       root), None


def train_batches(config, **kwargs):
  """`video.train_batches` of the training clips."""
  return video.train_batches(load_split, config, **kwargs)


def test_set(config, labelled=False):
  """`video.test_set` of the test clips."""
  return video.test_set(load_split, config, labelled)
