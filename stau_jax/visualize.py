r"""What a model attends to, and the CLI that draws a model's predictions.

The attention weights and gates of one sequence (the paper's Figs. 6 and 7)
as uint8 images (H, W, 3); strips, GIFs and metric curves come from
pictures.py, which needs no model. The CLI:

  python -m stau_jax.visualize --export=stau_mmnist.export --input=clips.npy \
      --output=pictures [--index=0 --index=3]
  python -m stau_jax.visualize --export=my_videos.export --input=clip.mp4 \
      [--start=30] [--resize] --output=pictures

writes strip.png (inputs | truth | prediction | |error| rows), animation.gif,
attention.png and gates.png for each chosen sequence of IN (N, T, H, W[, C])
or for the one sequence of a video file or frames folder (read as predict
reads it, `predict.read_input`). IN needs total_length frames per sequence to
show the truth; with several --index the names get a `seq<i>_` prefix.
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

GATES = ('F_T', 'F_S', 'U_T', 'U_S')


def reorder_attention(alpha=None, beta=None):
  """Attention weights from ring-slot order to time and layer order.

  Args:
    alpha: (T-1, L, tau, ...) temporal weights as the model collects them:
      at time step t, entry s is ring slot s of the last tau steps.
    beta: (T-1, L, theta, ...) spatial weights: at layer k, entry s is ring
      slot s of layers j <= k (slot j % theta).

  Returns:
    (alpha, beta), oldest first: alpha[t, k, i] weighs step t - tau + i
    (i = tau - 1: the previous step t - 1; steps < 0 are the zero initial
    states), beta[t, k, i] weighs layer k - theta + 1 + i (i = theta - 1:
    layer k itself) and is 0 where that layer would be < 0. None stays None.
  """
  if alpha is not None:
    alpha = np.asarray(alpha)
    tau = alpha.shape[2]
    order = np.stack([models.ring_order(t - 1, tau)
                      for t in range(alpha.shape[0])])
    order = order.reshape(order.shape[:1] + (1, tau) + (1,) * (alpha.ndim - 3))
    alpha = np.take_along_axis(alpha, order, axis=2)
  if beta is not None:
    beta = np.asarray(beta)
    theta = beta.shape[2]
    layers = np.arange(beta.shape[1])
    order = np.stack([models.ring_order(k, theta) for k in layers])
    extra = (1,) * (beta.ndim - 3)
    beta = np.take_along_axis(beta, order.reshape((1,) + order.shape + extra),
                              axis=2)
    valid = layers[:, None] - theta + 1 + np.arange(theta) >= 0
    beta = np.where(valid.reshape((1,) + valid.shape + extra), beta, 0)
  return alpha, beta


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_with_intermediates(model, params, observed, num_future):
  padding = jnp.zeros((observed.shape[0], num_future) + observed.shape[2:],
                      observed.dtype)
  predictions, state = model.apply(
      {'params': params}, jnp.concatenate([observed, padding], axis=1),
      mutable=['intermediates'])
  cell = state['intermediates']['unroll']['cells']['cell']
  return predictions[:, -num_future:], {k: v[0] for k, v in cell.items()}


def collect_attention(params, config, frames):
  """Attention weights and gates of the model predicting one sequence.

  Args:
    params: model parameters (e.g. from `export.load_export`).
    config: their experiment config.
    frames: (T, H, W, C) or (T, H, W) frames of one sequence, uint8 or float
      in [0, 1]; the first input_length are observed (later ones ignored).

  Returns:
    {'predictions': (T_out, H, W, C) clipped predictions, 'alpha': (T-1, L,
    tau), 'beta': (T-1, L, theta) in time and layer order (see
    `reorder_attention`), 'gates': {'F_T', 'F_S', 'U_T', 'U_S': (T-1, L, h,
    w, C)}} with T = total_length; the steps of pure prediction. Variants
    without temporal (spatial) attention have no alpha and F_T (beta, F_S).
  """
  observed = predict.prepare_inputs(np.asarray(frames)[None], config)
  num_future = config.data.total_length - config.data.input_length
  predictions, cell = jax.device_get(_predict_with_intermediates(
      models.create_model(config), params, observed, num_future))
  alpha, beta = reorder_attention(cell.get('alpha'), cell.get('beta'))
  result = {'predictions': np.clip(predictions[0], 0, 1),
            'gates': {name: cell[name][:, :, 0] for name in GATES
                      if name in cell}}
  if alpha is not None:
    result['alpha'] = alpha[..., 0]
  if beta is not None:
    result['beta'] = beta[..., 0]
  return result


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


def attention_maps(alpha=None, beta=None, input_length=None):
  """Temporal (alpha) and spatial (beta) attention weights of one sequence.

  Args:
    alpha: (T-1, L, tau) in time order (`collect_attention`), or None.
    beta: (T-1, L, theta) in layer order, or None.
    input_length: draws a dashed line before the first step that is fed the
      model's own prediction.

  Returns:
    uint8 (H, W, 3) image: a row of per-layer heatmaps for alpha (which of
    the last tau steps each step attends to) and one for beta (which of the
    last theta layers); grey marks layers that do not exist.
  """
  rows = [w for w in (alpha, beta) if w is not None]
  if not rows:
    raise ValueError('attention_maps needs alpha or beta.')
  steps, num_layers = rows[0].shape[:2]
  height = sum(1.2 + 0.3 * w.shape[2] for w in rows)
  figure = pictures.new_figure(1.0 + num_layers * max(3.0, 0.45 * steps), height)
  axes = figure.subplots(len(rows), num_layers, squeeze=False)
  row = 0
  if alpha is not None:
    tau = alpha.shape[2]
    labels = [f't-{tau - i}' for i in range(tau)]
    for k in range(num_layers):
      image = _attention_panel(axes[row, k], alpha[:, k], labels,
                               f'alpha, layer {k}: last {tau} steps',
                               input_length)
    row += 1
  if beta is not None:
    theta = beta.shape[2]
    for k in range(num_layers):
      layers = k - theta + 1 + np.arange(theta)
      weights = np.where(layers >= 0, beta[:, k], np.nan)
      labels = [f'layer {j}' if j >= 0 else '-' for j in layers]
      image = _attention_panel(axes[row, k], weights, labels,
                               f'beta, layer {k}: last {theta} layers',
                               input_length)
  figure.colorbar(image, ax=axes, shrink=0.8, label='attention weight')
  if input_length is not None:
    figure.suptitle('Attention weights (red line: from here on the input is '
                    "the model's own prediction)", fontsize=9)
  return pictures.render(figure)


def gate_maps(gates, input_length=None):
  """The four gates of one sequence, averaged over channels.

  Args:
    gates: {name: (T-1, L, h, w, C)} (`collect_attention`'s 'gates').
    input_length: marks the steps fed the model's own prediction ('t=5*').

  Returns:
    uint8 (H, W, 3) image: one row per gate and layer, one column per time
    step, each cell the channel mean of the gate (0 black .. 1 bright).
  """
  names = [name for name in GATES if name in gates]
  steps, num_layers = gates[names[0]].shape[:2]
  figure = pictures.new_figure(1.8 + 0.75 * steps, 0.4 + 0.75 * len(names) * num_layers)
  axes = figure.subplots(len(names) * num_layers, steps, squeeze=False)
  for n, name in enumerate(names):
    for k in range(num_layers):
      row = n * num_layers + k
      for t in range(steps):
        ax = axes[row, t]
        image = ax.imshow(gates[name][t, k].mean(-1), cmap='magma', vmin=0,
                          vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
          fed_prediction = input_length is not None and t >= input_length
          ax.set_title(f't={t}' + ('*' if fed_prediction else ''),
                       fontsize=8)
      axes[row, 0].set_ylabel(f'{name}\nlayer {k}', fontsize=8)
  figure.colorbar(image, ax=axes, shrink=0.6, label='gate (channel mean)')
  if input_length is not None:
    figure.suptitle('Gates per layer and time step (*: input is the '
                    "model's own prediction)", fontsize=9)
  return pictures.render(figure)


def write_pictures(params, config, frames, output_dir, prefix='', scale=None):
  """Writes strip.png, animation.gif, attention.png and gates.png.

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
  collected = collect_attention(params, config, frames)
  predictions = collected['predictions']
  paths = [os.path.join(output_dir, prefix + name) for name in
           ('strip.png', 'animation.gif', 'attention.png', 'gates.png')]
  pictures.save_png(paths[0], pictures.frame_strip(
      frames[:input_length], frames[input_length:], predictions, scale=scale,
      labels=True))
  pictures.save_gif(paths[1], frames, predictions, input_length, scale=scale)
  pictures.save_png(paths[2], attention_maps(
      collected.get('alpha'), collected.get('beta'), input_length))
  pictures.save_png(paths[3], gate_maps(collected['gates'], input_length))
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
