"""Something-Something v2: labelled clips of hands acting on objects.

Layout: a folder of <id>.webm videos or of <id>/ frame folders
(config.data.train_path, test_path), the split's JSON list ({"id",
"template", ...}; train_labels, test_labels) and the labels JSON (template
-> index; label_map). Every clip is sampled uniformly down to total_length
(20) frames and carries its label, for early action recognition
(recognize.py).
"""
import json
import os

import numpy as np

from stau_jax.data import pipeline
from stau_jax.data import video


def validate(config):
  """Raises ValueError when an input path is unset or missing."""
  video.validate_paths(config, ('train_path', 'train_labels', 'test_path',
                                'test_labels', 'label_map'))


def num_label_classes(config):
  """Classes of the action labels: config.classifier.num_classes (174)."""
  return config.classifier.num_classes


def sthsth_labels(labels_json, label_map_json, clip_ids=None):
  """(clip ids, int labels) of a Something-Something v2 split.

  Args:
    labels_json: something-something-v2-{train,validation}.json, a list of
      {"id", "label", "template", "placeholders"}.
    label_map_json: something-something-v2-labels.json, template -> index.
    clip_ids: keep only these ids (e.g. those present on disk).
  """
  with open(labels_json) as f:
    entries = json.load(f)
  with open(label_map_json) as f:
    label_map = {k: int(v) for k, v in json.load(f).items()}
  ids, labels = [], []
  for entry in entries:
    if not isinstance(entry, dict) or 'id' not in entry or 'template' not in entry:
      raise ValueError(f'{labels_json}: expected a list of {{"id", "label", '
                       f'"template", "placeholders"}} entries, got {entry!r}')
    template = entry['template'].replace('[', '').replace(']', '')
    if template not in label_map:
      raise ValueError(f'{labels_json}: template {template!r} of clip '
                       f'{entry["id"]} is not in {label_map_json}')
    if clip_ids is None or str(entry['id']) in clip_ids:
      ids.append(str(entry['id']))
      labels.append(label_map[template])
  return ids, np.array(labels, np.int64)


def load_split(config, split):
  """(Frames, windows (W, T), labels int (W,)) of 'train' or 'test'."""
  root = video.require_path(video.resolve_path(config, f'{split}_path'),
                            f'config.data.{split}_path')
  on_disk = {os.path.splitext(name)[0] for name in os.listdir(root)}
  ids, labels = sthsth_labels(
      video.require_path(video.resolve_path(config, f'{split}_labels'),
                         f'config.data.{split}_labels'),
      video.require_path(video.resolve_path(config, 'label_map'),
                         'config.data.label_map'),
      on_disk)
  if not ids:
    raise ValueError(f'{root}: none of the clips listed in '
                     f'config.data.{split}_labels are in this folder (expected '
                     '<id>.webm files or <id>/ frame folders)')
  length = (pipeline.eval_total_length(config) if split == 'test' else
            config.data.total_length)
  videos = [os.path.join(root, i + ext) for i in ids
            for ext in video.VIDEO_EXTENSIONS
            if os.path.isfile(os.path.join(root, i + ext))]
  if len(videos) == len(ids):
    video.video_backend()  # Fail now when no decoder is installed.
    frames = video.Frames(root, np.ones(len(ids), np.int64), videos=videos)
    windows = np.repeat(np.arange(len(ids))[:, None], length, axis=1)
    return frames, windows, labels
  frames = video.read_clip_folders(root, ids)
  return (frames, video.uniform_windows(frames.clip_lengths, length, root),
          labels)


def train_batches(config, **kwargs):
  """`video.train_batches` of the training clips."""
  return video.train_batches(load_split, config, **kwargs)


def test_set(config, labelled=False):
  """`video.test_set` of the validation clips."""
  return video.test_set(load_split, config, labelled)


def dataset(config, split, batch_size, *, seed=0, train=True,
            process_index=0, process_count=1, start_element=0):
  """A split as a tf.data.Dataset of {'frames', 'label'}.

  frames float32 (B, T, H, W, 3), label int64 (B,). process_index,
  process_count and start_element as in `video.build_dataset`.
  """
  frames, windows, labels = load_split(config, split)
  return video.build_dataset(frames, windows, config, batch_size=batch_size,
                             seed=seed, train=train, labels=labels,
                             process_index=process_index,
                             process_count=process_count,
                             start_element=start_element)
