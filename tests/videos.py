"""Tiny videos for the tests, encoded on the fly with PyAV.

Channel 0 steps by 20 per frame and channels 1-2 hold smooth gradients, so
lossy codecs keep them close. Codecs are those of the PyAV wheel (av 18:
mpeg4, libvpx for VP8).
"""
import numpy as np
import pytest


def video_frames(count=12, height=32, width=48):
  """uint8 (count, height, width, 3) smooth frames, distinct per index."""
  y, x = np.mgrid[:height, :width]
  return np.stack([np.stack([
      np.full((height, width), 20 * i + 10.0),
      40 + 150 * x / (width - 1),
      40 + 100 * y / (height - 1) + 5 * i], axis=-1)
                   for i in range(count)]).round().astype(np.uint8)


def write_video(path, frames, codec):
  """Encodes uint8 (T, H, W, 3) frames into `path` (container from suffix)."""
  av = pytest.importorskip('av')
  if codec not in av.codecs_available:
    pytest.skip(f'the installed PyAV has no {codec} encoder')
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = 'yuv420p'
    stream.bit_rate = 2_000_000
    for frame in frames:
      container.mux(stream.encode(
          av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())
  return str(path)
