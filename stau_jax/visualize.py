r"""What a model records, and the CLI that draws a model's predictions.

What a unit records while predicting one sequence (its `unit.Unit.records`:
STAU's attention weights and gates, the paper's Figs. 6 and 7; the LSTM
units' gates) as uint8 images (H, W, 3); strips, GIFs and metric curves come
from pictures.py, which needs no model. The CLI:

  python -m stau_jax.visualize --export=stau_mmnist.export --input=clips.npy \
      --output=pictures [--index=0 --index=3]
  python -m stau_jax.visualize --export=my_videos.export --input=clip.mp4 \
      [--start=30] [--resize] --output=pictures

writes strip.png (inputs | truth | prediction | |error| rows) and
animation.gif for each chosen sequence of IN (N, T, H, W[, C]) or for the one
sequence of a video file or frames folder (read as predict reads it,
`predict.read_input`), then attention.png (units that record attention
weights) and gates.png (units that record gates). IN needs total_length
frames per sequence to show the truth; with several --index the names get a
`seq<i>_` prefix.
"""
import functools
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import cli
from stau_jax import export
from stau_jax import models
from stau_jax import outputs
from stau_jax import pictures
from stau_jax import predict


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_with_records(model, params, observed, num_future):
  padding = jnp.zeros((observed.shape[0], num_future) + observed.shape[2:],
                      observed.dtype)
  predictions, records = models.predict_with_records(
      model, params, jnp.concatenate([observed, padding], axis=1))
  return predictions[:, -num_future:], records


def collect_records(params, config, frames):
  """What the model's unit records while predicting one sequence.

  Args:
    params: model parameters (e.g. from `export.load_export`).
    config: their experiment config.
    frames: (T, H, W, C) or (T, H, W) frames of one sequence, uint8 or float
      in [0, 1]; the first input_length are observed (later ones ignored).

  Returns:
    {'predictions': (T_out, H, W, C) clipped predictions, 'records': {name:
    (T-1, L, ...)} with T = total_length, 'declared': the unit's
    `unit.Record`s (what each record is)}; see `models.predict_with_records`.
    E.g. STAU's 'alpha' (T-1, L, tau), 'beta' (T-1, L, theta) and gates
    'F_T', 'F_S', 'U_T', 'U_S' (T-1, L, h, w, C); ConvLSTM's 'i', 'f', 'g',
    'o'.
  """
  observed = predict.prepare_inputs(np.asarray(frames)[None], config)
  num_future = config.data.total_length - config.data.input_length
  model = models.create_model(config)
  predictions, records = jax.device_get(_predict_with_records(
      model, params, observed, num_future))
  return {'predictions': np.clip(predictions[0], 0, 1),
          'records': {record.name: records[record.name][0]
                      for record in model.records},
          'declared': model.records}


def _attention_panel(ax, weights, row_labels, title, input_length):
  """Heatmap of (steps, entries) weights: entries down, time steps across."""
  image = ax.imshow(np.ma.masked_invalid(weights.T), cmap='viridis', vmin=0,
                    vmax=1, aspect='auto')
  ax.set_facecolor('lightgrey')  # shows through masked (absent) entries
  steps, entries = weights.shape
  if steps * entries <= 200:
    for t in range(steps):
      for i in range(entries):
        if np.isfinite(weights[t, i]):
          ax.text(t, i, f'{weights[t, i]:.2f}', ha='center', va='center',
                  fontsize=6, color='black' if weights[t, i] > 0.6 else 'white')
  if input_length is not None and input_length - 0.5 < steps:
    ax.axvline(input_length - 0.5, color='red', linestyle='--', linewidth=1)
  ax.set_xticks(np.arange(steps))
  ax.set_yticks(np.arange(entries), row_labels)
  ax.set_xlabel('time step t (predicts frame t+1)')
  ax.set_title(title, fontsize=10)
  return image


def _attention_rows(records, declared):
  """The attention records as (name, kind, (T-1, L, entries) weights)."""
  return [(record.name, record.kind, np.asarray(records[record.name]))
          for record in declared if record.kind != 'map']


def attention_maps(records, declared, input_length=None):
  """The attention weights a unit records, for one sequence.

  Args:
    records: {name: (T-1, L, entries)} (`collect_records`' 'records').
    declared: the unit's `unit.Record`s (`collect_records`' 'declared'):
      which records are weights over past steps or lower layers.
    input_length: draws a dashed line before the first step that is fed the
      model's own prediction.

  Returns:
    uint8 (H, W, 3) image: a row of per-layer heatmaps for each attention
    record (e.g. STAU's alpha: which of the last tau steps each step attends
    to; beta: which of the last theta layers); grey marks layers that do
    not exist.
  """
  rows = _attention_rows(records, declared)
  if not rows:
    raise ValueError('attention_maps needs attention weights; this unit '
                     'records none (its records are all maps).')
  steps, num_layers = rows[0][2].shape[:2]
  height = sum(1.2 + 0.3 * weights.shape[2] for *_, weights in rows)
  figure = pictures.new_figure(1.0 + num_layers * max(3.0, 0.45 * steps), height)
  axes = figure.subplots(len(rows), num_layers, squeeze=False)
  for row, (name, kind, weights) in enumerate(rows):
    entries = weights.shape[2]
    for k in range(num_layers):
      if kind == 'step_attention':
        labels = [f't-{entries - i}' for i in range(entries)]
        shown, title = weights[:, k], f'{name}, layer {k}: last {entries} steps'
      else:
        layers = k - entries + 1 + np.arange(entries)
        labels = [f'layer {j}' if j >= 0 else '-' for j in layers]
        shown = np.where(layers >= 0, weights[:, k], np.nan)
        title = f'{name}, layer {k}: last {entries} layers'
      image = _attention_panel(axes[row, k], shown, labels, title,
                               input_length)
  figure.colorbar(image, ax=axes, shrink=0.8, label='attention weight')
  if input_length is not None:
    figure.suptitle('Attention weights (red line: from here on the input is '
                    "the model's own prediction)", fontsize=9)
  return pictures.render(figure)


def _map_rows(records, declared):
  """(label, (T-1, h, w) maps scaled to [0, 1]) per map record and layer
  that records it: the mean over channels (and any axes before h, w)."""
  rows = []
  for record in declared:
    if record.kind != 'map':
      continue
    values = np.asarray(records[record.name], np.float32)
    low, high = record.value_range
    means = values.mean(axis=tuple(range(2, values.ndim - 3)) + (-1,))
    label = record.name + ('' if (low, high) == (0, 1)
                           else f' [{low:g}, {high:g}]')
    for k in range(values.shape[1]):
      if np.isfinite(means[:, k]).all():
        rows.append((f'{label}\nlayer {k}', (means[:, k] - low) / (high - low)))
  return rows


def gate_maps(records, declared, input_length=None):
  """The gates (map records) a unit records, for one sequence.

  Args:
    records: {name: (T-1, L, ..., h, w, C)} (`collect_records`' 'records').
    declared: the unit's `unit.Record`s: which records are maps, and the
      range of each.
    input_length: marks the steps fed the model's own prediction ('t=5*').

  Returns:
    uint8 (H, W, 3) image: one row per map record and layer that records
    it, one column per time step, each cell the channel mean, from the low
    (black) to the high (bright) end of the record's range (a range other
    than [0, 1] is in the row's label).
  """
  rows = _map_rows(records, declared)
  if not rows:
    raise ValueError('gate_maps needs gates; this unit records none (its '
                     'records are all attention weights).')
  steps = rows[0][1].shape[0]
  figure = pictures.new_figure(1.8 + 0.75 * steps, 0.4 + 0.75 * len(rows))
  axes = figure.subplots(len(rows), steps, squeeze=False)
  for row, (label, maps) in enumerate(rows):
    for t in range(steps):
      ax = axes[row, t]
      image = ax.imshow(maps[t], cmap='magma', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        fed_prediction = input_length is not None and t >= input_length
        ax.set_title(f't={t}' + ('*' if fed_prediction else ''), fontsize=8)
    axes[row, 0].set_ylabel(label, fontsize=8)
  figure.colorbar(image, ax=axes, shrink=0.6,
                  label='channel mean (0: low, 1: high end of its range)')
  if input_length is not None:
    figure.suptitle('Gates per layer and time step (*: input is the '
                    "model's own prediction)", fontsize=9)
  return pictures.render(figure)


def write_pictures(params, config, frames, output_dir, prefix='', scale=None):
  """Writes strip.png and animation.gif, then attention.png and gates.png
  where the unit records attention weights and gates.

  Args:
    params: model parameters.
    config: their experiment config.
    frames: (T >= total_length, H, W, C) float frames in [0, 1] of one
      sequence.
    output_dir: directory to write to (created).
    prefix: prepended to the file names.
    scale: frame upscaling in the strip and GIF; None: frames >= 64 pixels.

  Returns:
    The paths written.
  """
  input_length = config.data.input_length
  frames = np.asarray(frames, np.float32)[:config.data.total_length]
  scale = scale or pictures.auto_scale(frames.shape[1:3])
  collected = collect_records(params, config, frames)
  predictions = collected['predictions']
  path = lambda name: os.path.join(output_dir, prefix + name)  # noqa: E731
  paths = [path('strip.png'), path('animation.gif')]
  pictures.save_png(paths[0], pictures.frame_strip(
      frames[:input_length], frames[input_length:], predictions, scale=scale,
      labels=True))
  pictures.save_gif(paths[1], frames, predictions, input_length, scale=scale)
  records, declared = collected['records'], collected['declared']
  kinds = {record.kind == 'map' for record in declared}
  for name, maps, draw in (('attention.png', False, attention_maps),
                           ('gates.png', True, gate_maps)):
    if maps in kinds:
      paths.append(path(name))
      pictures.save_png(paths[-1], draw(records, declared, input_length))
  return paths


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a program)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string('input', None, '.npy of sequences (N, T, H, W[, C]), '
                      'uint8 or float in [0, 1], T >= total_length; or a '
                      'video file or folder of frames (one sequence).')
  flags.DEFINE_integer('start', 0, 'First frame of the input drawn.',
                       lower_bound=0)
  flags.DEFINE_bool('resize', False, "Center-crop and resize a video's frames "
                    "to the export's frame size.")
  flags.DEFINE_string('output', None, 'Directory for the pictures.')
  flags.DEFINE_multi_integer('index', [0], 'Sequences to draw (repeatable).')
  flags.DEFINE_integer('scale', 0, 'Frame upscaling; 0: frames >= 64 pixels.',
                       lower_bound=0)
  flags.mark_flags_as_required(['export', 'input', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
    raise outputs.OutputError(
        f'--output={FLAGS.output} is a file; visualize writes a folder of '
        'pictures', None, 'name a folder (it is created if missing)')
  params, config = export.load_export(FLAGS.export)
  clips = predict.read_input(FLAGS.input, config, FLAGS.start, FLAGS.resize)
  for index in FLAGS.index:
    if not 0 <= index < len(clips):
      raise app.UsageError(f'--index={index} is outside the {len(clips)} '
                           f'sequences of {FLAGS.input}.')
  clips = np.asarray(clips[FLAGS.index])
  predict.prepare_inputs(clips, config)  # checks shape, dtype and range
  if clips.shape[1] < config.data.total_length:
    raise app.UsageError(
        f'{FLAGS.input} has {clips.shape[1]} frames per sequence; drawing the '
        f'truth needs total_length={config.data.total_length}.')
  clips = clips[..., None] if clips.ndim == 4 else clips
  clips = (clips / 255 if clips.dtype == np.uint8 else clips).astype(
      np.float32)
  for index, frames in zip(FLAGS.index, clips):
    prefix = f'seq{index}_' if len(FLAGS.index) > 1 else ''
    for path in write_pictures(params, config, frames, FLAGS.output, prefix,
                               FLAGS.scale or None):
      print(f'Wrote {path}.')


if __name__ == '__main__':
  cli.run(main, define_flags)
