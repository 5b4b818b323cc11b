"""A run's log in its workdir: losses, evaluations, samples, TensorBoard.

`SummaryWriter(workdir)` writes, in workdir:
  train_losses.jsonl     one JSON record per step ('step', 'loss', ...)
  eval/step_<N>.json     one evaluation (+ step_<N>.txt, its table)
  samples/step_<N>.png   strips of a few test sequences (+ step_<N>_<i>.gif)
  events.out.tfevents.*  TensorBoard scalars and images
Every host creates one (`create_default_writer`); only process 0's writes
files, the others' calls do nothing, as flax's
`create_default_writer(just_logging=...)` does. The event files come from the
`tensorboard` package's protos and record framing, so neither TensorFlow nor
a writer thread is needed; `tensorboard --logdir=WORKDIR` reads them.
"""
import io
import json
import os
import socket
import time

from absl import logging
import jax
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from stau_jax import errors
from stau_jax import outputs
from stau_jax import pictures

LOSSES_FILE = 'train_losses.jsonl'
# Training and evaluation log a progress line at least this often.
PROGRESS_EVERY_SECS = 30


def format_duration(seconds):
  """H:MM:SS of a number of seconds."""
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """The rate and time left of a loop's progress lines (training, evaluation).

  Counts items done (steps, batches): `mark(done)` starts measuring at
  `done`, e.g. again after work that is not the loop's own (an evaluation
  inside training). A progress line is `due()` PROGRESS_EVERY_SECS after the
  last `logged()` (or the start).
  """

  def __init__(self, done=0):
    self.mark(done)
    self._logged = self._start

  def mark(self, done):
    self._done, self._start = done, time.time()

  def elapsed(self):
    """Seconds since the mark."""
    return time.time() - self._start

  def rate(self, done):
    """Items per second since the mark; None before any item or second."""
    elapsed = self.elapsed()
    return ((done - self._done) / elapsed if done > self._done and elapsed > 0
            else None)

  def seconds_left(self, done, total):
    """Seconds the rest of `total` items take at `rate`; None if unknown."""
    rate = self.rate(done)
    return (total - done) / rate if rate and total is not None else None

  def eta(self, done, total):
    """`seconds_left` as H:MM:SS, or '?'."""
    left = self.seconds_left(done, total)
    return '?' if left is None else format_duration(left)

  def due(self):
    return time.time() - self._logged >= PROGRESS_EVERY_SECS

  def logged(self):
    self._logged = time.time()


def read_losses(workdir):
  """The per-step records of WORKDIR/train_losses.jsonl, in order.

  A torn last line (power loss, full disk) is dropped with a warning; any
  other unreadable line is a CheckpointError naming the file and line.
  """
  path = os.path.join(workdir, LOSSES_FILE)
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    text = f.read().decode('utf-8', errors='replace')
  lines = text.split('\n')
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict) and isinstance(record.get('step'), int):
      records.append(record)
    elif number == len(lines):  # no newline after it: an interrupted write
      logging.warning('Dropping the incomplete last line of %s (the run that '
                      'wrote it was interrupted): %r', path, line[:80])
    else:
      raise errors.CheckpointError(
          f'Line {number} is not a loss record: {line[:80]!r}', path,
          'delete that line, or the file to lose the loss history')
  return records


def create_default_writer(workdir):
  """This host's writer: files on process 0, nothing on the others."""
  return SummaryWriter(workdir, just_logging=jax.process_index() > 0)


class SummaryWriter:
  """Appends a run's losses, evaluations, samples and events to `workdir`.

  With just_logging=True it writes no files (the hosts other than process
  0); evaluations are still logged.
  """

  def __init__(self, workdir, just_logging=False):
    self.workdir = workdir
    self.just_logging = just_logging
    self.path = None
    if just_logging:
      return
    os.makedirs(workdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
            f'{os.getpid()}')
    self.path = os.path.join(workdir, name)
    self._events = RecordWriter(open(self.path, 'wb'))
    self._write_event(event_pb2.Event(file_version='brain.Event:2'))

  def _write_event(self, event):
    event.wall_time = time.time()
    self._events.write(event.SerializeToString())

  def _write_summary(self, value, step):
    if not self.just_logging:
      self._write_event(event_pb2.Event(
          step=int(step), summary=summary_pb2.Summary(value=[value])))

  def scalar(self, tag, value, step):
    """Writes one float scalar."""
    self._write_summary(
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step)

  def scalars(self, values, step):
    """Writes a {tag: float} dict at `step`."""
    for tag, value in values.items():
      self.scalar(tag, value, step)

  def image(self, tag, image, step):
    """Writes a uint8 (H, W), (H, W, 1) or (H, W, 3) image as PNG."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    encoded = summary_pb2.Summary.Image(
        height=image.shape[0], width=image.shape[1],
        colorspace=1 if image.ndim == 2 else 3,
        encoded_image_string=buffer.getvalue())
    self._write_summary(summary_pb2.Summary.Value(tag=tag, image=encoded),
                        step)

  def truncate_losses(self, step):
    """Drops loss records after `step`: a killed run wrote them past its
    checkpoint, and the resumed run writes them again."""
    if self.just_logging:
      return
    records = [r for r in read_losses(self.workdir) if r['step'] <= step]
    path = os.path.join(self.workdir, LOSSES_FILE)
    outputs.write_text(path, ''.join(json.dumps(r) + '\n' for r in records))

  def write_losses(self, records):
    """Appends per-step records ({'step': int, ...}) to train_losses.jsonl."""
    if self.just_logging:
      return
    with open(os.path.join(self.workdir, LOSSES_FILE), 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)

  def write_evaluation(self, step, result, scalars, table=None):
    """One evaluation: eval/step_<N>.json (`result` and the step), the
    `table` (logged, and written as step_<N>.txt) and `scalars` as eval/*."""
    if table is not None:
      logging.info('Evaluation at step %d on %d test sequences:\n%s', step,
                   result['count'], table)
    if not self.just_logging:
      os.makedirs(os.path.join(self.workdir, 'eval'), exist_ok=True)
      name = os.path.join(self.workdir, 'eval', f'step_{step:06d}')
      outputs.write_text(name + '.json',
                         json.dumps({'step': step, **result}, indent=2))
      if table is not None:
        outputs.write_text(name + '.txt', table + '\n')
    self.scalars({f'eval/{k}': v for k, v in scalars.items()}, step)
    self.flush()

  def write_samples(self, step, frames, predictions, input_length):
    """samples/step_<N>.png (and a TensorBoard image) of the sequences
    frames (N, T, H, W, C) over their predictions (N, T - input_length, H,
    W, C), and one GIF per sequence."""
    if self.just_logging or not len(frames):
      return
    strip = pictures.samples_strip(frames, predictions, input_length)
    os.makedirs(os.path.join(self.workdir, 'samples'), exist_ok=True)
    prefix = os.path.join(self.workdir, 'samples', f'step_{step:06d}')
    pictures.save_png(prefix + '.png', strip)
    self.image('samples', strip, step)
    for i, (sequence, predicted) in enumerate(zip(frames, predictions)):
      pictures.save_gif(f'{prefix}_{i}.gif', sequence, predicted,
                        input_length)
    self.flush()

  def flush(self):
    if not self.just_logging:
      self._events.flush()

  def close(self):
    if not self.just_logging:
      self._events.close()
