"""Pictures of frames and metrics: strips (PNG), animations (GIF), curves.

Numpy in, uint8 images (H, W, C) or files out; no model. The training loop's
evaluation samples, the detect CLI, the notebook and visualize.py (which adds
the attention and gate pictures of a model) draw with these.
"""
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from stau_jax import outputs

_GAP = 2  # pixels between frames and rows


def to_uint8(frames):
  """Float frames in [0, 1] (clipped) -> uint8."""
  return np.round(np.clip(np.asarray(frames, np.float32), 0, 1) *
                  255).astype(np.uint8)


def _upscale(frames, scale):
  """Nearest-neighbour upscaling of (..., H, W, C) frames by an integer."""
  return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


def _label_column(names, row_height, channels, gap=_GAP):
  """uint8 (len(names) row_height + gaps, width, channels): names on white."""
  font = ImageFont.load_default()
  width = max(int(np.ceil(font.getlength(name))) for name in names) + 6
  image = Image.new('L', (width, len(names) * (row_height + gap) - gap), 255)
  draw = ImageDraw.Draw(image)
  for i, name in enumerate(names):
    top = i * (row_height + gap) + row_height // 2
    draw.text((2, top), name, fill=0, font=font, anchor='lm')
  return np.repeat(np.asarray(image)[..., None], channels, axis=-1)


def frame_strip(inputs, truth, prediction, scale=1, labels=False):
  """One sequence as four rows: inputs | truth | prediction | abs error.

  Args:
    inputs: (T_in, H, W, C) observed frames in [0, 1].
    truth: (T_out, H, W, C) true future frames in [0, 1].
    prediction: (T_out, H, W, C) predicted future frames (clipped to [0, 1]).
    scale: integer nearest-neighbour upscaling of every frame.
    labels: prepend a column naming the rows.

  Returns:
    uint8 (4 sH + 3 gap, max(T_in, T_out) (sW + gap) - gap, C) image on
    white; row r, frame t sits at [r (sH + gap):, t (sW + gap):]. The error
    row is |truth - prediction|, 1 = white. With `labels`, the unlabeled
    strip is the right part of the result.
  """
  truth = np.asarray(truth, np.float32)
  prediction = np.asarray(prediction, np.float32)
  if truth.shape != prediction.shape or np.shape(inputs)[1:] != truth.shape[1:]:
    raise ValueError(f'inputs {np.shape(inputs)}, truth {truth.shape} and '
                     f'prediction {prediction.shape} must be (T, H, W, C) '
                     f'frames of one size, truth and prediction alike.')
  rows = [to_uint8(inputs), to_uint8(truth), to_uint8(prediction),
          to_uint8(np.abs(truth - np.clip(prediction, 0, 1)))]
  rows = [_upscale(row, scale) for row in rows]
  _, height, width, channels = rows[0].shape
  length = max(len(row) for row in rows)
  strip = np.full((4 * (height + _GAP) - _GAP,
                   length * (width + _GAP) - _GAP, channels), 255, np.uint8)
  for r, row in enumerate(rows):
    for t, frame in enumerate(row):
      top, left = r * (height + _GAP), t * (width + _GAP)
      strip[top:top + height, left:left + width] = frame
  if labels:
    names = ('inputs', 'truth', 'prediction', '|error|')
    strip = np.concatenate([_label_column(names, height, channels), strip],
                           axis=1)
  return strip


def sequence_strip(frames, predictions, input_length):
  """One sequence as a two-row image: truth on top, prediction below.

  Args:
    frames: (T, H, W, C) true frames in [0, 1]; the first `input_length` are
      the inputs.
    predictions: (T - input_length, H, W, C) predicted future frames.
    input_length: number of observed frames.

  Returns:
    uint8 (2 H + gap, T W + gaps, C) image; below the inputs the prediction
    row is white, so predictions sit under the frames they predict.
  """
  frames = to_uint8(frames)
  predictions = to_uint8(predictions)
  length, height, width, channels = frames.shape
  if predictions.shape != (length - input_length, height, width, channels):
    raise ValueError(f'predictions {predictions.shape} do not match the '
                     f'{length - input_length} future frames of '
                     f'{frames.shape}.')
  strip = np.full((2 * height + _GAP, length * (width + _GAP) - _GAP,
                   channels), 255, np.uint8)
  for t in range(length):
    left = t * (width + _GAP)
    strip[:height, left:left + width] = frames[t]
    if t >= input_length:
      strip[height + _GAP:, left:left + width] = predictions[t - input_length]
  return strip


def samples_strip(frames, predictions, input_length):
  """Strips of several sequences stacked vertically: (N, T, ...) -> uint8."""
  rows = []
  for sequence, predicted in zip(frames, predictions):
    strip = sequence_strip(sequence, predicted, input_length)
    if rows:
      rows.append(np.full((2 * _GAP,) + strip.shape[1:], 255, np.uint8))
    rows.append(strip)
  return np.concatenate(rows)


def save_png(path, image):
  """Writes a uint8 (H, W) or (H, W, C) image atomically (`outputs`); the
  extension of `path` picks the format."""
  image = np.asarray(image)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with outputs.atomic_path(path) as temporary:
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        temporary)


def auto_scale(image_size):
  """Upscaling that shows (H, W) frames at least 64 pixels on a side."""
  return max(1, -(-64 // min(image_size)))


def save_gif(path, frames, predictions, input_length, duration_ms=200,
             scale=1):
  """Writes an animated GIF atomically: truth on the left, the model's view
  on the right.

  The right panel shows the inputs, then the predicted frames. When `frames`
  hold only the inputs (no true future), the GIF is the model's view alone.

  Args:
    path: output .gif path.
    frames: (T, H, W, C) true frames in [0, 1], T = input_length +
      len(predictions), or T = input_length.
    predictions: (T - input_length, H, W, C) predicted future frames.
    input_length: number of observed frames.
    duration_ms: time per frame.
    scale: integer nearest-neighbour upscaling of every frame.
  """
  frames = _upscale(to_uint8(frames), scale)
  shown = np.concatenate([frames[:input_length],
                          _upscale(to_uint8(predictions), scale)])
  if len(frames) < len(shown):
    panels = shown
  else:
    gap = np.full(frames.shape[:2] + (_GAP,) + frames.shape[3:], 255,
                  np.uint8)
    panels = np.concatenate([frames, gap, shown], axis=2)
  if panels.shape[-1] == 1:
    panels = panels[..., 0]
  images = [Image.fromarray(panel) for panel in panels]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with outputs.atomic_path(path) as temporary:
    images[0].save(temporary, format='GIF', save_all=True,
                   append_images=images[1:], duration=duration_ms, loop=0)


def new_figure(width, height):
  """A matplotlib Figure drawn by Agg: no pyplot, no global backend change."""
  # Imported here: only the plots need matplotlib, training's strips do not.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(width, height), dpi=100, layout='constrained')
  FigureCanvasAgg(figure)
  return figure


def render(figure):
  """Draws a figure; returns it as a uint8 (H, W, 3) image."""
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


_METRIC_LABELS = {'mse': 'MSE / frame', 'mae': 'MAE / frame',
                  'psnr': 'PSNR (dB)', 'ssim': 'SSIM (data_range 2)',
                  'ssim_dr1': 'SSIM (data_range 1)'}


def metric_curves(per_frame, first_frame=1, title=None):
  """One curve per metric over the predicted frames.

  Args:
    per_frame: {metric name: T_out values}, e.g. the 'per_frame' entry of
      `evaluate.evaluate_params` or of a run's eval/step_N.json.
    first_frame: number of the first predicted frame on the x axis (e.g.
      input_length + 1 to count from the start of the sequence).
    title: optional figure title.

  Returns:
    uint8 (H, W, 3) image.
  """
  names = list(per_frame)
  figure = new_figure(2.8 * len(names), 2.6)
  axes = figure.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names):
    values = np.asarray(per_frame[name], np.float64)
    frames = np.arange(first_frame, first_frame + len(values))
    ax.plot(frames, values, marker='o', markersize=3)
    ax.set_xlabel('predicted frame')
    ax.set_title(_METRIC_LABELS.get(name, name), fontsize=10)
    ax.grid(alpha=0.3)
  if title:
    figure.suptitle(title)
  return render(figure)
