r"""Evaluation: metrics of pure prediction on the test set.

  python -m stau_jax.evaluate --export=stau_mmnist.export \
      [--data=mnist_test_seq.npy | --config.data.test_set=official] \
      [--config.eval_metrics=mse,ssim,lpips,fvd] \
      [--output=metrics.json] [--baseline=zeros|last_frame]

prints the per-frame table of the config's `eval_metrics` (default: MSE/frame,
MAE/frame, PSNR, SSIM with the paper's data_range 2.0, SSIM with data_range
1.0; also LPIPS, and FVD over the whole test set) and the averages. The model
sees the first input_length frames of each test sequence and predicts the
rest; metrics run on device in JAX (stau_jax/metrics.py), batched and pmapped
over the local devices. Training calls the same functions. --baseline scores
a naive predictor (all-zero frames, or the last input frame repeated) on the
same test set, for comparison.
"""
import json

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from stau_jax import checkpoints
from stau_jax import cli
from stau_jax import data
from stau_jax import distributed
from stau_jax import errors
from stau_jax import export
from stau_jax import metrics
from stau_jax import models
from stau_jax import outputs
from stau_jax import summaries

FLAGS = flags.FLAGS
BASELINES = ('zeros', 'last_frame')
# Overridable fields only a Moving MNIST export has (--data sets test_set).
MOVING_MNIST_TEST_FIELDS = ('data.test_set', 'data.digits',
                            'data.num_test_sequences', 'data.test_seed')


def eval_metric_names(config):
  """The metrics `config.eval_metrics` names."""
  return metrics.parse_metrics(config.eval_metrics)


def validate_eval_config(config, test_set_size=None):
  """Raises ValueError, before any work, if the test clips cannot give a metric.

  Traces the chosen metrics on the shape of one test batch (their own checks
  run: LPIPS frame size, FVD clip length) and checks FVD has >= 2 clips when
  the evaluated set's size is known: `test_set_size` (an opened set's
  `TestSet.size`), else what the config tells (`data.test_set_size`).
  """
  per_frame, set_level = metrics.split_kinds(eval_metric_names(config))
  future = (data.eval_total_length(config) - config.data.input_length,)
  clips = jax.ShapeDtypeStruct(
      (1,) + future + tuple(config.data.image_size) + (config.data.channels,),
      jnp.float32)
  jax.eval_shape(lambda p, t: (metrics.batch_sums(p, t, names=per_frame),
                               metrics.batch_features(p, t, set_level)),
                 clips, clips)
  if test_set_size is None:
    test_set_size = data.test_set_size(config)
  size = expected_test_size(test_set_size, config.eval_batch_size,
                            config.num_eval_batches)
  for name in set_level:
    needed = metrics.SET_METRICS[name].min_count
    if size is not None and size < needed:
      remedy = ('raise config.num_eval_batches or config.eval_batch_size'
                if size != test_set_size else
                f'the test set has only {size}; use a larger one or leave '
                f'{name} out of config.eval_metrics')
      raise ValueError(f'{name} needs at least {needed} test clips; this '
                       f'evaluation has {size}: {remedy}.')


def expected_test_size(size, batch_size, num_batches):
  """Sequences an evaluation of num_batches batches (-1: all) will see, of
  a test set of `size` sequences (None: unknown); None when unknown."""
  if num_batches > 0:
    size = min(size or num_batches * batch_size, num_batches * batch_size)
  return size


def baseline_predictions(baseline, frames, input_length):
  """A naive predictor's future frames, to compare models against.

  Args:
    baseline: 'zeros' (all-black frames) or 'last_frame' (the last observed
      frame repeated).
    frames: (B, T, H, W, C) test sequences.
    input_length: observed frames.

  Returns:
    (B, T - input_length, H, W, C) predictions of frames[:, input_length:].
  """
  future_shape = frames[:, input_length:].shape
  if baseline == 'zeros':
    return jnp.zeros(future_shape, frames.dtype)
  if baseline == 'last_frame':
    return jnp.broadcast_to(frames[:, input_length - 1:input_length],
                            future_shape)
  raise ValueError(f'Unknown baseline {baseline!r}; choose one of {BASELINES}.')


def make_eval_step(model, config, baseline=None):
  """A pmapped step: (params, frames, valid) -> (sums, features, predictions).

  frames is (devices, B, T, H, W, C) and valid (devices, B). The per-frame
  sums of config.eval_metrics (`metrics.batch_sums`, summed over all devices)
  are replicated; features is ({name: {'real', 'predicted'}: (all devices, B,
  D)}, valid (all devices, B)), the set-level metrics' features of every
  device of every host; predictions are (devices, B, T - input_length, H, W,
  C) clipped to [0, 1]. With `baseline` (see `baseline_predictions`) the
  model is not run.
  """
  input_length = config.data.input_length
  per_frame, set_level = metrics.split_kinds(eval_metric_names(config))

  def eval_step(params, frames, valid):
    if baseline:
      # A barrier: XLA would constant-fold the metrics of the all-zero
      # baseline (SSIM's windows, the LPIPS and I3D networks), for minutes.
      predictions = jax.lax.optimization_barrier(
          baseline_predictions(baseline, frames, input_length))
    else:
      predictions = model.apply({'params': params},
                                frames)[:, input_length - 1:]
    targets = frames[:, input_length:]
    sums = metrics.batch_sums(predictions, targets, valid, per_frame)
    features = metrics.batch_features(predictions, targets, set_level)
    return (jax.lax.psum(sums, 'batch'),
            jax.lax.all_gather((features, valid), 'batch'),
            jnp.clip(predictions, 0, 1))

  return jax.pmap(eval_step, axis_name='batch')


def evaluate(eval_step, params, batches, num_batches=-1, num_samples=0,
             num_sequences=None):
  """Runs `eval_step` over test batches; every host must call it.

  Args:
    eval_step: from `make_eval_step`.
    params: parameters replicated over the local devices.
    batches: iterator of {'frames': (B, T, H, W, C), 'valid': (B,)} global
      batches (`data.TestSet.batches`); each host evaluates its slice,
      and B must be divisible by the number of devices of all hosts.
    num_batches: stop after this many batches; -1 for all.
    num_samples: how many sequences of the first batch to return.
    num_sequences: the sequences it will see if known
      (`expected_test_size`), for the ETA of the progress lines (one every
      summaries.PROGRESS_EVERY_SECS).

  Returns:
    (result, samples): `metrics.finalize` output and {'frames': (n, T, H, W,
    C), 'predictions': (n, T - input_length, H, W, C)} numpy arrays of this
    host's first n <= num_samples sequences.
  """
  sums, features, samples = None, None, None
  progress = summaries.Progress()
  total = num_batches if num_batches > 0 else None
  for index, batch in enumerate(batches):
    if index == num_batches:
      break
    frames, valid = batch['frames'], batch['valid']
    if total is None and num_sequences:
      total = -(-num_sequences // len(frames))
    if index and progress.due():
      logging.info('Evaluating: %d/%s batches of %d | %.2f batches/s | ETA %s',
                   index, total or '?', len(frames), progress.rate(index),
                   progress.eta(index, total))
      progress.logged()
    frames, valid = distributed.host_shard((frames, valid))
    batch_sums, (batch_features, all_valid), predictions = eval_step(
        params, frames, valid)
    sums = batch_sums if sums is None else metrics.merge_sums(sums, batch_sums)
    if batch_features:
      batch_features = metrics.valid_features(
          jax.tree_util.tree_map(lambda x: x[0].reshape((-1,) + x.shape[3:]),
                                 batch_features), all_valid[0].reshape(-1))
      features = (batch_features if features is None else
                  metrics.merge_features(features, batch_features))
    if samples is None:
      predictions = np.asarray(predictions).reshape((-1,) +
                                                    predictions.shape[2:])
      keep = min(num_samples, int(valid.sum()))
      samples = {'frames': frames.reshape((-1,) + frames.shape[2:])[:keep],
                 'predictions': predictions[:keep]}
  if sums is None:
    raise ValueError('The test set is empty.')
  sums = jax.device_get(jax.tree_util.tree_map(lambda x: x[0], sums))
  return metrics.finalize(sums, features), samples


def evaluate_params(params, config, batch_size=None, num_batches=-1,
                    baseline=None, model=None):
  """Evaluates `params` (or a `baseline`) on config's test set on this host's devices.

  Validates the config once and opens the test set once. `model` is
  config's model (`models.validate_model_config` or `export.check_params`
  return it) when the caller has validated config.model; by default it is
  validated and built here.

  Returns the `metrics.finalize` result and, under 'test_set', the scored
  sequences' identity (`data.test_set_identity`).
  """
  batch_size = batch_size or config.eval_batch_size
  if not (num_batches == -1 or num_batches >= 1):
    raise ValueError(f'num_eval_batches must be a positive integer, or -1 for '
                     f'the whole test set; got {num_batches!r}.')
  if model is None:
    model = models.validate_model_config(config)
  data.validate_data_config(config, num_devices=1)
  test_set = data.load_test_set(config)
  validate_eval_config(config, test_set.size)
  eval_step = make_eval_step(model, config, baseline)
  replicated = distributed.replicate(params)
  digest = data.new_digest()
  result, _ = evaluate(eval_step, replicated,
                       test_set.batches(batch_size, digest), num_batches,
                       num_sequences=expected_test_size(
                           test_set.size, batch_size, num_batches))
  return {**result, 'test_set': data.test_set_identity(
      config, test_set, digest, result['count'])}


def evaluate_export(path, overrides=None, baseline=None):
  """Evaluates the export file at `path` (or a `baseline`) on its test set.

  overrides: {dotted field: value} set on the export's config first (see
  `overridable_fields`, `apply_overrides`). Reads the file, validates and
  builds the model and opens the test set once each. Returns the
  `metrics.finalize` result.
  """
  params, config = export.read_export(path)
  apply_overrides(config, overrides or {})
  model = export.check_params(params, config, source=path)
  return evaluate_params(params, config, config.eval_batch_size,
                         config.num_eval_batches, baseline,
                         model=model)


def overridable_fields():
  """Fields that `--config.x=...` may set on top of the export's config.

  Placeholders: they give each field's type; its value is the export's
  unless overridden (the defaults live in configs/).
  """
  placeholder = ml_collections.config_dict.placeholder
  overridable = ml_collections.ConfigDict()
  overridable.eval_metrics = placeholder(str)
  overridable.eval_batch_size = placeholder(int)
  overridable.num_eval_batches = placeholder(int)
  overridable.model = ml_collections.ConfigDict()
  for name in checkpoints.IMPLEMENTATION_FIELDS:  # how, not what, it computes
    overridable.model[name] = placeholder(str)
  overridable.data = ml_collections.ConfigDict()
  for name in ('test_set', 'data_dir', 'digits'):
    overridable.data[name] = placeholder(str)
  for name in ('num_test_sequences', 'test_seed', 'test_total_length'):
    overridable.data[name] = placeholder(int)
  return overridable


def apply_overrides(config, overrides):
  """Sets {'data.test_set': value, ...} (dotted paths) on the export's config.

  Raises InputError for a Moving MNIST test-set field (configs/mmnist.py) on
  an export of another dataset: its test set is its data files.
  """
  dataset = config.data.dataset
  for path, value in overrides.items():
    if path in MOVING_MNIST_TEST_FIELDS and dataset != 'moving_mnist':
      raise errors.InputError(
          f'config.{path} chooses a Moving MNIST test set, but the export was '
          f'trained on {dataset!r}', None,
          'its test set is read from config.data.data_dir (override it with '
          '--config.data.data_dir)')
    parent = config
    *parents, name = path.split('.')
    for key in parents:
      parent = parent[key]
    parent[name] = value


def define_flags():
  """Defines the CLI's flags (not at import: training imports this module)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string(
      'data', None, 'Test set .npy in the official Moving MNIST layout (uint8 '
      '(20, N, 64, 64)); shorthand for --config.data.test_set=FILE.')
  flags.DEFINE_string('output', None, 'Write the metrics as JSON here.')
  flags.DEFINE_enum('baseline', None, BASELINES,
                    'Evaluate a naive predictor on the export\'s test set '
                    'instead of the model.')
  overridable = overridable_fields()
  cli.define_config_dict(
      'config', overridable,
      "Overrides of the export's config, e.g. --config.data.test_set="
      'official, --config.eval_batch_size=32, --config.num_eval_batches=10, '
      '--config.eval_metrics=mse,ssim,lpips,fvd.',
      hint='the export fixes the model and the frames its parameters belong '
      'to; evaluate overrides ' + ', '.join(
          f'--config.{name}' for name in
          sorted(checkpoints.flatten(overridable.to_dict()))))
  flags.mark_flags_as_required(['export'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  outputs.check_output_paths(inputs={'export': FLAGS.export, 'data': FLAGS.data},
                             output=FLAGS.output)
  overrides = dict(config_flags.get_override_values(FLAGS['config']))
  if FLAGS.data:
    if 'data.test_set' in overrides:
      raise app.UsageError('--data and --config.data.test_set both choose the '
                           'test set; give one')
    overrides['data.test_set'] = FLAGS.data
  result = evaluate_export(FLAGS.export, overrides, FLAGS.baseline)
  if FLAGS.baseline:
    print(f'Baseline {FLAGS.baseline!r} on the test set of {FLAGS.export}:')
  print(metrics.format_table(result))
  print(f'{result["count"]} sequences; averages: ' + ', '.join(
      f'{name} {value:.4f}' for name, value in result['mean'].items()))
  if FLAGS.output:
    outputs.write_text(FLAGS.output, json.dumps(result, indent=2))
    print(f'Wrote {FLAGS.output}.')


if __name__ == '__main__':
  cli.run(main, define_flags)
