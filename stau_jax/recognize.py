r"""Early action recognition: a 3D-conv classifier on a frozen predictor.

  python -m stau_jax.recognize --config=configs/mmnist_action.py \
      --predictor=PRED.export [--workdir=DIR] [--evaluate_only]

The paper's protocol (Table 9): a video predictor, trained first on the same
videos (`python -m stau_jax.main`, then `python -m stau_jax.export`), sees
only the observed front frames (config.data.input_length) and fills in the
rest autoregressively, as at test time; its top layer's hidden states over
all T-1 steps (B, T-1, h, w, C), e.g. 19 x 16 x 16 x 64 on
Something-Something v2, are the features of a classifier built on 3D
convolutions (`Classifier`), trained with cross-entropy while the predictor
stays frozen (no gradients reach it). `--predictor=none` trains the
"Baseline" row: the same classifier on the observed frames alone,
space-to-depth'd to the predictor's hidden grid (patch_size *
2**num_downsample), with no predictor. Any unit of the registry can supply
the features: the export's config.model is the run's model.

Training reuses train.py's loop (`train.fit`): resumable orbax checkpoints,
the workdir lock, train_losses.jsonl, progress lines and TensorBoard as for
prediction; each evaluation writes eval/step_<N>.json with top-1 and top-5
accuracy and the PSNR of the predicted frames (None for the baseline).
`--evaluate_only` scores the latest checkpoint of a finished run.
"""
import functools
import hashlib
import json
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stau_jax import checkpoints
from stau_jax import cli
from stau_jax import data
from stau_jax import distributed
from stau_jax import export
from stau_jax import metrics
from stau_jax import models
from stau_jax import train
from stau_jax.models import predictor as predictor_lib

NO_PREDICTOR = 'none'
TOP_K = 5
# A resumed run must also keep the classifier and the frozen predictor's
# export file (its SHA-256, see `with_predictor`).
ARCHITECTURE_FIELDS = checkpoints.ARCHITECTURE_FIELDS + ('classifier',
                                                         'predictor_sha256')


class Classifier(nn.Module):
  """3D convolutions over a clip of feature maps, then a linear layer.

  (B, T, h, w, C) -> logits (B, num_classes): per entry of `features`, a
  3x3x3 convolution with stride 2 over time and space and a ReLU; then the
  mean over (time, height, width) and a dense layer.
  """
  num_classes: int
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3, 3), strides=(2, 2, 2))(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2, 3)))


def create_classifier(config):
  """The `Classifier` of config.classifier."""
  return Classifier(num_classes=config.classifier.num_classes,
                    features=tuple(config.classifier.features))


def make_features_fn(config, predictor=None):
  """fn(predictor params, frames (B, T, H, W, C)) -> (features, predictions).

  With a `predictor` (a models.Predictor): it sees frames[:, :input_length]
  only (the rest is zeroed) and predicts the rest autoregressively; the
  features are its top layer's hidden states (B, T-1, h, w, C) float32 and
  the predictions (B, T - input_length, H, W, C) are its frames for
  frames[:, input_length:]. Both carry no gradient to the predictor.
  Without one (the baseline): the observed frames space-to-depth'd to the
  hidden grid, (B, input_length, h, w, p*p*C), and predictions None.
  """
  input_length = config.data.input_length
  if predictor is None:
    patch = config.model.patch_size * 2**config.model.num_downsample

    def observed_frames(predictor_params, frames):
      del predictor_params
      return predictor_lib.patch_frames(frames[:, :input_length], patch), None
    return observed_frames

  def hidden_states(predictor_params, frames):
    observed = jnp.asarray(frames).at[:, input_length:].set(0)
    predictions, hidden = predictor.apply({'params': predictor_params},
                                          observed, return_hidden=True)
    return jax.lax.stop_gradient((hidden[:, :, -1].astype(jnp.float32),
                                  predictions[:, input_length - 1:]))
  return hidden_states


def recognition_loss(features_fn, classifier):
  """The classifier's `train.Task.loss`: (params, batch, rng, step,
  frozen=predictor params, absent for the baseline) -> (cross-entropy,
  {'accuracy'}) on this device's batch {'frames': (B_device, T, H, W, C),
  'labels': int32 (B_device,)}."""

  def loss(params, batch, rng, step, frozen=None):
    del rng, step  # no randomness, no schedule
    features, _ = features_fn(frozen, batch['frames'])
    logits = classifier.apply({'params': params}, features)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['labels']).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['labels'])
    return cross_entropy, {'accuracy': accuracy}

  return loss


def eval_step(params, predictor_params, frames, labels, valid, *,
              features_fn, classifier, config):
  """Sums over the valid clips of all devices (inside pmap): 'count', 'top1',
  'top5' (hits) and 'psnr' (each clip's mean PSNR over its predicted
  frames; 0 without a predictor)."""
  features, predictions = features_fn(predictor_params, frames)
  logits = classifier.apply({'params': params}, features)
  k = min(TOP_K, config.classifier.num_classes)
  hits = jax.lax.top_k(logits, k)[1] == labels[:, None]
  sums = {'count': valid.sum(),
          'top1': jnp.sum(hits[:, 0] & valid),
          'top5': jnp.sum(hits.any(-1) & valid),
          'psnr': 0.0}
  if predictions is not None:
    clip_psnr = metrics.psnr(
        predictions, frames[:, config.data.input_length:]).mean(-1)
    sums['psnr'] = jnp.sum(jnp.where(valid, clip_psnr, 0.0))
  return jax.lax.psum(sums, 'batch')


def check_labels(batches, num_classes, split):
  """Passes `batches` on; ValueError at the first label id outside
  [0, num_classes) (of a valid row, where batches have 'valid')."""
  for index, batch in enumerate(batches):
    labels = np.asarray(batch['labels'])
    if 'valid' in batch:
      labels = labels[np.asarray(batch['valid'])]
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
      raise ValueError(
          f'{split} batch {index} has label id {int(bad[0])}, outside [0, '
          f'{num_classes}): config.classifier.num_classes must cover every '
          'class of the label files (config.data.label_map)')
    yield batch


def evaluate(p_eval_step, params, predictor_params, batches, has_predictions):
  """Top-1, top-5 and PSNR over `batches`; every host calls it.

  batches: {'frames', 'labels', 'valid'} global batches
  (`data.TestSet.batches`); each host takes its slice.
  Returns {'count', 'top1', 'top5', 'psnr'} (accuracies in [0, 1]; psnr in
  dB, None without a predictor).
  """
  totals = None
  for batch in batches:
    shard = distributed.host_shard(batch)
    sums = jax.device_get(p_eval_step(params, predictor_params,
                                      shard['frames'], shard['labels'],
                                      shard['valid']))
    sums = {k: float(v[0]) for k, v in sums.items()}
    totals = sums if totals is None else {k: totals[k] + sums[k]
                                          for k in totals}
  if totals is None:
    raise ValueError('The test set is empty.')
  count = totals['count']
  return {'count': int(count), 'top1': totals['top1'] / count,
          'top5': totals['top5'] / count,
          'psnr': totals['psnr'] / count if has_predictions else None}


def write_evaluation(writer, step, result, samples=None):
  """Logs one evaluation and writes eval/step_<N>.json and TensorBoard."""
  del samples  # recognition draws no sample strips
  psnr = result['psnr']
  logging.info('Evaluation at step %d on %d test clips: top-1 %.4f, top-5 '
               '%.4f, PSNR %s.', step, result['count'], result['top1'],
               result['top5'], 'n/a' if psnr is None else f'{psnr:.2f} dB')
  writer.write_evaluation(step, result, {
      k: v for k, v in result.items() if k != 'count' and v is not None})


def recognition_task(config, predictor_params=None):
  """The `train.Task` of the classifier on `config`'s labelled videos.

  predictor_params: the frozen predictor (config.model) or None for the
  baseline on the observed frames.
  """
  predictor = (None if predictor_params is None else
               models.create_model(config))
  features_fn = make_features_fn(config, predictor)
  classifier = create_classifier(config)
  frames = jax.ShapeDtypeStruct(
      (1, config.data.total_length) + tuple(config.data.image_size) +
      (config.data.channels,), jnp.float32)
  features = jax.eval_shape(features_fn, predictor_params, frames)[0]
  replicated = (None if predictor_params is None else
                distributed.replicate(predictor_params))
  p_eval_step = jax.pmap(functools.partial(
      eval_step, features_fn=features_fn, classifier=classifier,
      config=config), axis_name='batch')
  num_classes = config.classifier.num_classes

  def train_batches(start_step):
    return check_labels(data.create_labelled_train_iterator(
        config, num_devices=jax.local_device_count(), start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count()), num_classes, 'Training')

  test_set = data.load_labelled_test_set(config)

  def evaluate_params(params):
    batches = test_set.batches(config.eval_batch_size)
    if config.num_eval_batches > 0:
      batches = (b for _, b in zip(range(config.num_eval_batches), batches))
    return evaluate(p_eval_step, params, replicated,
                    check_labels(batches, num_classes, 'Test'),
                    predictor is not None), None

  source = (f'the top layer of a frozen {config.model.cell} predictor'
            if predictor is not None else 'the observed frames (baseline)')
  return train.Task(
      init_params=lambda rng: classifier.init(
          rng, jnp.zeros(features.shape))['params'],
      loss=recognition_loss(features_fn, classifier),
      train_batches=train_batches, evaluate=evaluate_params,
      write_evaluation=write_evaluation,
      description=lambda params: (
          f'Classifier: {models.count_params(params)} parameters, '
          f'{num_classes} classes, on features {features.shape[1:]} of '
          f'{source}.'),
      architecture_fields=ARCHITECTURE_FIELDS, frozen=replicated)


def validate_config(config, num_devices, process_count):
  """`train.validate_config` plus the classifier's settings (ValueError)."""
  train.validate_config(config, num_devices, process_count)
  classifier = config.get('classifier')
  if classifier is None:
    raise ValueError('The config has no classifier section; use an action '
                     'config such as configs/mmnist_action.py')
  num_classes = classifier.num_classes
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f'config.classifier.num_classes={num_classes!r} must be '
                     'an integer >= 2')
  if data.num_label_classes(config) != num_classes:
    raise ValueError(
        f'config.classifier.num_classes={num_classes}, but the labels of '
        f'{config.data.dataset} have {data.num_label_classes(config)} classes')
  if not classifier.features or not all(
      isinstance(w, int) and w > 0 for w in classifier.features):
    raise ValueError(f'config.classifier.features={classifier.features!r} '
                     'must be a non-empty list of positive channel counts')


def with_predictor(config, predictor):
  """(the run's config, predictor params or None) for --predictor.

  predictor: an export file, or 'none' for the baseline. The run's
  config.model becomes the export's, config.predictor its path and
  config.predictor_sha256 the file's digest (a resumed run must use the same
  predictor, see ARCHITECTURE_FIELDS).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.predictor = predictor
  if predictor == NO_PREDICTOR:
    config.predictor_sha256 = ''
    return config, None
  params, predictor_config = export.load_export(predictor)
  for name in ('image_size', 'channels'):
    want, have = (json.dumps(c.data[name]) for c in (config, predictor_config))
    if want != have:
      raise ValueError(
          f'The predictor {predictor} was trained on data.{name} = {have}, '
          f'but this config has {want}; train the predictor on the same '
          'frames')
  if predictor_config.data.input_length != config.data.input_length:
    logging.warning(
        'The predictor %s was trained to continue %d observed frames; here it '
        'sees %d (the paper trains one predictor per observed fraction).',
        predictor, predictor_config.data.input_length,
        config.data.input_length)
  config.model = predictor_config.model
  with open(predictor, 'rb') as f:
    config.predictor_sha256 = hashlib.sha256(f.read()).hexdigest()
  return config, params


def train_and_evaluate(config, workdir, predictor_params=None):
  """Trains and evaluates the classifier, resuming from workdir.

  config: from `with_predictor`. Returns the final host TrainState; raises
  as train.train_and_evaluate does.
  """
  validate_config(config, jax.local_device_count(), jax.process_count())
  return train.fit(config, workdir, functools.partial(
      recognition_task, config, predictor_params))


def evaluate_run(config, workdir, predictor_params=None):
  """Scores the latest checkpoint of a run: (step, `evaluate` result)."""
  validate_config(config, jax.local_device_count(), jax.process_count())
  task = recognition_task(config, predictor_params)
  manager = checkpoints.create_manager(workdir, config, read_only=True)
  if manager.latest_step() is None:
    raise checkpoints.CheckpointError(
        'No checkpoint to evaluate', workdir,
        'train first (the same command without --evaluate_only)')
  fresh = train.create_train_state(config, task.init_params,
                                   train.create_optimizer(config))
  state = checkpoints.restore_or_keep(manager, fresh, config, workdir,
                                      task.architecture_fields)
  result, _ = task.evaluate(distributed.replicate(state.params))
  return int(state.step), result


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI's flags (only when run as a program)."""
  cli.define_config_file('config', None,
                         'Action config, e.g. configs/mmnist_action.py.')
  flags.DEFINE_string(
      'predictor', None, "Export file of the frozen predictor, or 'none' for "
      'the baseline on the observed frames.')
  flags.DEFINE_string(
      'workdir', None, 'Run directory; default runs/<config.name>_<predictor '
      'file name or none>.')
  flags.DEFINE_bool('evaluate_only', False,
                    'Score the latest checkpoint of the run and exit.')
  flags.mark_flags_as_required(['config', 'predictor'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(cli.drop_orbax_info)
  distributed.initialize_from_environment()
  config, predictor_params = with_predictor(FLAGS.config, FLAGS.predictor)
  name = os.path.splitext(os.path.basename(FLAGS.predictor))[0]
  workdir = FLAGS.workdir or f'runs/{config.name}_{name}'
  if not FLAGS.evaluate_only:
    logging.info('Config:\n%s', config)
    train_and_evaluate(config, workdir, predictor_params)
    return
  step, result = evaluate_run(config, workdir, predictor_params)
  psnr = result['psnr']
  print(f'{workdir} at step {step} on {result["count"]} test clips: top-1 '
        f'{result["top1"]:.4f}, top-5 {result["top5"]:.4f}, PSNR '
        + ('n/a' if psnr is None else f'{psnr:.2f} dB'))
  print(json.dumps({'step': step, **result}))


if __name__ == '__main__':
  cli.run(main, define_flags)
