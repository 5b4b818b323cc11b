"""A TensorBoard event-file writer that needs neither TensorFlow nor a thread.

Writes scalars and PNG images with the `tensorboard` package's protos and
record framing; `tensorboard --logdir=WORKDIR` reads the files.
"""
import io
import os
import socket
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

# Training and evaluation log a progress line at least this often.
PROGRESS_EVERY_SECS = 30


def format_duration(seconds):
  """H:MM:SS of a number of seconds."""
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class SummaryWriter:
  """Appends events to a new `events.out.tfevents.*` file in `logdir`."""

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
            f'{os.getpid()}')
    self.path = os.path.join(logdir, name)
    self._writer = RecordWriter(open(self.path, 'wb'))
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def _write(self, event):
    event.wall_time = time.time()
    self._writer.write(event.SerializeToString())

  def scalar(self, tag, value, step):
    """Writes one float scalar."""
    value = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
    self._write(event_pb2.Event(step=int(step),
                                summary=summary_pb2.Summary(value=[value])))

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
    value = summary_pb2.Summary.Value(tag=tag, image=encoded)
    self._write(event_pb2.Event(step=int(step),
                                summary=summary_pb2.Summary(value=[value])))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()
