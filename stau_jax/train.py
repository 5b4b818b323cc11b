"""Training and evaluation loop: pmapped train step, checkpoints, summaries.

`train_and_evaluate(config, workdir)` trains the model `config` describes on
its dataset, on all local devices (and all hosts after
`distributed.initialize_from_environment`), resuming from the latest
checkpoint in `workdir`. The loop itself, `fit(config, workdir, make_task)`,
trains any `Task`: the loop owns the optimizer, the train state, the pmapped
train and check steps and the divergence guard; a task brings its
parameters' init, its loss, its batches and its evaluation (docs/tasks.md,
"Adding a task"). Video prediction is `prediction_task` here, early action
recognition is in recognize.py.

Workdir layout (the run's log, from train_losses.jsonl on, is written by
`summaries.SummaryWriter`):
  config.json            the config of the run (checked on resume)
  lock                   host and pid of the process training here
  checkpoints/<step>/    orbax checkpoints, the last config.keep_checkpoints
  train_losses.jsonl     one line per step: step, loss, learning_rate, eta
  eval/step_<N>.json     config.eval_metrics: per-frame and mean (+ step_<N>.txt)
  samples/step_<N>.png   strips of a few test sequences (truth over prediction)
  samples/step_<N>_<i>.gif
  events.out.tfevents.*  TensorBoard: train/*, eval/*, samples
"""
import contextlib
import errno
import functools
import math
from typing import Any, Callable, NamedTuple

from absl import logging
import flax
from flax import jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax

from stau_jax import checkpoints
from stau_jax import data
from stau_jax import distributed
from stau_jax import errors
from stau_jax import evaluate
from stau_jax import metrics
from stau_jax import models
from stau_jax import sampling
from stau_jax import summaries

NUM_SAMPLES = 4  # test sequences drawn as PNG strips and GIFs per evaluation
FIRST_STEPS_LOGGED = 2  # progress lines also for a run's first steps
SLOW_RUN_SECS = 24 * 3600  # a longer run says so and names faster options


@flax.struct.dataclass
class TrainState:
  """Everything a training run resumes from.

  step: int32 scalar, updates done so far. params: float32 parameters.
  opt_state: optax state. rng: PRNG key of the run; update s draws its
  scheduled-sampling mask from fold_in(rng, s), so masks need no carried
  random state.
  """
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array


def create_learning_rate_schedule(config):
  """Constant learning_rate, then x lr_decay_rate every lr_decay_every_steps.

  The reference decays after update i (1-based) when i >= lr_decay_start_step
  and i % lr_decay_every_steps == 0, so update s + 1 (count s here) uses
  learning_rate * rate**n, n = #{i in [max(start, 1), s]: i % every == 0}.
  """
  start = max(config.lr_decay_start_step, 1)
  every = config.lr_decay_every_steps

  def schedule(count):
    decays = jnp.where(count >= start, count // every - (start - 1) // every, 0)
    return config.learning_rate * config.lr_decay_rate**decays

  return schedule


def create_optimizer(config):
  """Adam (PyTorch defaults: b1 0.9, b2 0.999, eps 1e-8) on the schedule."""
  return optax.adam(create_learning_rate_schedule(config))


def create_train_state(config, init_params, optimizer):
  """A fresh host train state (numpy arrays) from config.seed.

  init_params: PRNG key -> the parameters to train (`Task.init_params`).
  """

  def init(key):
    init_rng, rng = jax.random.split(key)
    params = init_params(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=rng)

  return jax.device_get(jax.jit(
      init, compiler_options=models.INIT_COMPILER_OPTIONS)(
          jax.random.PRNGKey(config.seed)))


def _task_loss(loss, params, batch, state, frozen):
  """`Task.loss` of `params` on `batch` at state.step (with `frozen=` when
  the task has frozen arrays)."""
  extra = {} if frozen is None else {'frozen': frozen}
  return loss(params, batch, state.rng, state.step, **extra)


def train_step(state, batch, frozen, *, loss, optimizer, schedule):
  """One update on this device's share of the global batch (inside pmap).

  Args:
    state: this device's copy of the TrainState.
    batch: this device's share of a batch of `Task.train_batches`.
    frozen: `Task.frozen` (this device's copy) or None.
    loss: `Task.loss`.
    optimizer: from `create_optimizer`.
    schedule: its learning rate schedule (`create_learning_rate_schedule`).

  Returns:
    (new state, {'loss', 'learning_rate', then the loss's metrics}): the
    loss and metrics are means over all devices, and so are the gradients.
  """
  (value, step_metrics), grads = jax.value_and_grad(
      lambda params: _task_loss(loss, params, batch, state, frozen),
      has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, 'batch')
  value, step_metrics = jax.lax.pmean((value, step_metrics), 'batch')
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {'loss': value, 'learning_rate': schedule(state.step),
                  **step_metrics}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), step_metrics


def check_step(state, batch, frozen, *, loss):
  """Whether `state` can be saved (inside pmap): its loss on `batch`.

  The loss a train step reports was computed with the parameters before its
  update; this one is computed with the parameters after it, so a checkpoint
  is only written when the state it holds gives a finite loss.

  Returns:
    {'loss': the global-batch loss of state.params, 'finite': whether every
    parameter and optimizer array is finite}.
  """
  value, _ = _task_loss(loss, state.params, batch, state, frozen)
  finite = jnp.all(jnp.stack([
      jnp.all(jnp.isfinite(x))
      for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
      if jnp.issubdtype(x.dtype, jnp.inexact)]))
  return {'loss': jax.lax.pmean(value, 'batch'), 'finite': finite}


def make_train_step(loss, optimizer, config):
  """`train_step` of `loss` jit-compiled and pmapped over devices (axis
  'batch'): (state, batch, frozen) -> (state, step metrics)."""
  return jax.pmap(
      functools.partial(train_step, loss=loss, optimizer=optimizer,
                        schedule=create_learning_rate_schedule(config)),
      axis_name='batch', donate_argnums=(0,))


def make_check_step(loss):
  """`check_step` of `loss` pmapped over devices (axis 'batch')."""
  return jax.pmap(functools.partial(check_step, loss=loss), axis_name='batch')


def prediction_loss(model, config):
  """The video predictor's `Task.loss`: (params, frames, rng, step) ->
  (MSE plus the unit's auxiliary loss, if any (PredRNN-v2), {'eta'}).

  frames: this device's (B_device, T, H, W, C) in [0, 1]. The scheduled
  sampling mask of `step` is drawn from `rng` for the global batch
  (config.batch_size) and sliced to this device's rows (inside pmap).
  """

  def loss(params, frames, rng, step):
    device_batch = frames.shape[0]
    mask = sampling.sampling_mask(config, rng, step, config.batch_size)
    mask = jax.lax.dynamic_slice_in_dim(
        mask, jax.lax.axis_index('batch') * device_batch, device_batch)
    predictions, auxiliary_loss = models.predict_with_auxiliary_loss(
        model, params, frames, mask)
    mse = jnp.mean(jnp.square(predictions - frames[:, 1:]))
    return mse + auxiliary_loss, {'eta': sampling.sampling_eta(config, step)}

  return loss


def validate_numbers(config):
  """Raises ValueError naming the first number of `config` (any section)
  that is NaN or infinite."""
  for name, value in checkpoints.flatten(config.to_dict()).items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f'config.{name}={value} must be a finite number.')


def validate_config(config, num_devices, process_count):
  """Raises ValueError naming the first bad setting, before any work starts."""
  validate_numbers(config)
  data.validate_data_config(config, num_devices, process_count)
  models.validate_model_config(config)
  sampling.validate_sampling_config(config)
  evaluate.validate_eval_config(config)
  for name in ('num_train_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'log_every_steps', 'lr_decay_every_steps', 'keep_checkpoints'):
    if not isinstance(config[name], int) or config[name] < 1:
      raise ValueError(f'config.{name} must be a positive integer; got '
                       f'{config[name]!r}.')
  if not isinstance(config.num_eval_batches, int) or not (
      config.num_eval_batches == -1 or config.num_eval_batches >= 1):
    raise ValueError(f'config.num_eval_batches must be a positive integer, or '
                     f'-1 for the whole test set; got '
                     f'{config.num_eval_batches!r}.')
  if config.learning_rate <= 0 or not 0 < config.lr_decay_rate <= 1:
    raise ValueError(f'Need config.learning_rate > 0 and 0 < '
                     f'config.lr_decay_rate <= 1; got {config.learning_rate} '
                     f'and {config.lr_decay_rate}.')


class Task(NamedTuple):
  """What `fit` trains and how it evaluates it; see `prediction_task`.

  The loop owns the optimizer (`create_optimizer`), the TrainState, the
  pmapped train and check steps and the divergence guard; a task brings:

  init_params: PRNG key -> the parameters to train (traced under jit).
  loss: (params, batch, rng, step) -> (loss, metrics), run inside the loop's
    pmap (axis 'batch') on this device's share of a batch: the scalar to
    minimize and a dict of scalars logged beside it (`name value`); the loop
    averages both and the gradients over devices. rng: the run's PRNG key
    (the same every step: fold in `step`); step: updates done so far.
  train_batches: start_step -> endless iterator of device batches (leading
    axis: local devices).
  evaluate: replicated params -> (result, samples); every host calls it.
  write_evaluation: (writer, step, result, samples): logs and writes one
    evaluation with the `summaries.SummaryWriter`; every host calls it.
  description: host params -> one line logged at the start (the model and
    its parameter count).
  architecture_fields: config fields a resumed run must share with the run
    that wrote the checkpoints (`checkpoints.check_compatible`).
  frozen: None, or arrays replicated over the local devices
    (`distributed.replicate`) that the loss reads but never trains, e.g. a
    frozen network's parameters; the loss then gets them as `frozen=`.
  """
  init_params: Callable
  loss: Callable
  train_batches: Callable
  evaluate: Callable
  write_evaluation: Callable
  description: Callable
  architecture_fields: tuple[str, ...] = checkpoints.ARCHITECTURE_FIELDS
  frozen: Any = None


def prediction_task(config):
  """The video predictor of `config`, trained and evaluated on its frames."""
  model = models.create_model(config, config.half_precision)
  eval_step = evaluate.make_eval_step(models.create_model(config), config)
  test_set = data.load_test_set(config)

  def train_batches(start_step):
    return data.create_train_iterator(
        config, num_devices=jax.local_device_count(), start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  def evaluate_params(params):
    digest = data.new_digest()
    result, samples = evaluate.evaluate(
        eval_step, params, test_set.batches(config.eval_batch_size, digest),
        config.num_eval_batches, NUM_SAMPLES, evaluate.expected_test_size(
            test_set.size, config.eval_batch_size, config.num_eval_batches))
    return {**result, 'test_set': data.test_set_identity(
        config, test_set, digest, result['count'])}, samples

  def write_evaluation(writer, step, result, samples):
    writer.write_evaluation(step, result, result['mean'],
                            metrics.format_table(result))
    if samples:
      writer.write_samples(step, samples['frames'], samples['predictions'],
                           config.data.input_length)

  return Task(
      init_params=functools.partial(models.init_params, model, config),
      loss=prediction_loss(model, config), train_batches=train_batches,
      evaluate=evaluate_params, write_evaluation=write_evaluation,
      description=lambda params: (
          f'Model: {config.model.cell} cell, {models.count_params(params)} '
          f'parameters; {models.precision_name(config.half_precision)} '
          'compute.'))


def train_and_evaluate(config, workdir):
  """Trains and periodically evaluates; resumes from workdir's last checkpoint.

  The config is validated first; then process 0 holds the workdir's lock
  (`checkpoints.workdir_lock`) for the whole run.

  Args:
    config: experiment config (see configs/mmnist.py).
    workdir: run directory (see the module docstring for its layout).

  Returns:
    The final host TrainState.

  Raises:
    checkpoints.CheckpointError: the workdir holds a run that cannot be
      resumed with this config (nothing is overwritten).
    checkpoints.WorkdirBusyError: another process trains in the workdir.
    FloatingPointError: the loss became NaN or inf (the last good checkpoint
      is kept).
    errors.TrainingStopped: Ctrl-C (or SIGTERM, via cli.run) or a full
      disk stopped the run; the message names the checkpoint to resume from.
  """
  validate_config(config, jax.local_device_count(), jax.process_count())
  return fit(config, workdir, functools.partial(prediction_task, config))


def fit(config, workdir, make_task):
  """The training loop of any `Task`, holding the workdir's lock.

  Process 0 takes the lock (`checkpoints.workdir_lock`), then `make_task()`
  builds the task, which is trained from the workdir's last checkpoint to
  config.num_train_steps with progress lines, losses, checkpoints and
  evaluations as the module docstring describes. The config must already be
  validated. Returns the final host TrainState; raises as
  `train_and_evaluate` does.
  """
  lock = (checkpoints.workdir_lock(workdir) if jax.process_index() == 0 else
          contextlib.nullcontext())
  with lock:
    return _fit(config, workdir, make_task())


def _kept(workdir, step):
  """Which checkpoint a stopped run resumes from, as a clause."""
  return (f'the last good checkpoint (step {step}) is kept in {workdir}'
          if step is not None else
          f'no checkpoint had been written to {workdir}')


def _diverged(what, workdir, last_good_step):
  """The FloatingPointError of a run whose loss or parameters became NaN."""
  return FloatingPointError(f'{what}; {_kept(workdir, last_good_step)}. '
                            'Lower config.learning_rate or check the data.')


def _check_losses(records, workdir, last_good_step):
  """Raises `_diverged` at the first step record whose loss is not finite."""
  for record in records:
    if not np.isfinite(record['loss']):
      raise _diverged(f'Loss is {record["loss"]} at step {record["step"]}',
                      workdir, last_good_step)


def _check_state(check, step, workdir, last_good_step):
  """Raises `_diverged` unless the `check_step` result `check` is finite."""
  finite, loss = check['finite'][0], check['loss'][0]
  if not (finite and np.isfinite(loss)):
    what = 'NaN or inf' if not finite else f'a loss of {loss}'
    raise _diverged(f'The parameters after step {step} give {what}', workdir,
                    last_good_step)


def _start(config, workdir, task, manager, optimizer):
  """The host state to train from: the workdir's last checkpoint (logging
  what changed since) or, for a new run, a fresh one (config.json written)."""
  fresh = create_train_state(config, task.init_params, optimizer)
  state = checkpoints.restore_or_keep(manager, fresh, config, workdir,
                                      task.architecture_fields)
  if int(state.step):
    logging.info('Resuming from the checkpoint of step %d.', int(state.step))
    for name, started, current in checkpoints.changed_fields(
        checkpoints.read_config(workdir), config):
      logging.info('Resuming with config.%s = %s (the run started with %s).',
                   name, current, started)
  elif jax.process_index() == 0:
    checkpoints.write_config(workdir, config)
  return state


def _log_progress(writer, config, step, records, progress, first_step_secs):
  """One progress line (mean loss since the last one, rate, ETA) and its
  TensorBoard scalars. The line after the first step of a process reports
  how long compiling and running it took instead of a rate."""
  loss = np.mean([r['loss'] for r in records])
  learning_rate = records[-1]['learning_rate']
  others = {k: v for k, v in records[-1].items()
            if k not in ('step', 'loss', 'learning_rate')}
  rate = progress.rate(step)
  speed = (f'compiled and ran the first step in {first_step_secs:.1f} s'
           if rate is None else f'{rate:.2f} steps/s | ETA '
           f'{progress.eta(step, config.num_train_steps)}')
  logging.info('step %d/%d | loss %.5f | lr %.3g | %s%s', step,
               config.num_train_steps, loss, learning_rate,
               ''.join(f'{k} {v:.3f} | ' for k, v in others.items()), speed)
  scalars = {'train/loss': loss, 'train/learning_rate': learning_rate,
             **{f'train/{k}': v for k, v in others.items()}}
  if rate is not None:
    scalars['train/steps_per_sec'] = rate
  writer.scalars(scalars, step)
  writer.flush()
  progress.logged()


def _warn_if_slow(config, step, progress):
  """Says so, once, when the rest of the run would take more than a day at
  the rate measured so far, and names the faster options. Returns whether
  it had a rate to judge by."""
  left = progress.seconds_left(step, config.num_train_steps)
  if left is None:
    return False
  if left > SLOW_RUN_SECS:
    logging.warning(
        'At %.3g steps/s the remaining %d steps take %.1f days. For a quick '
        'run use configs/tiny.py on a CPU (seconds); for the paper\'s runs '
        'use a GPU (launch/gpu_single.sh, docs/speed.md).',
        progress.rate(step), config.num_train_steps - step, left / 86400)
  return True


def _due(config, step, initial_step, progress):
  """(log, evaluate, checkpoint): what is due after update `step`; all three
  after the last one, a progress line also after a run's first steps and
  PROGRESS_EVERY_SECS after the last line."""
  is_last = step == config.num_train_steps
  log_now = (step % config.log_every_steps == 0 or is_last or
             step <= initial_step + FIRST_STEPS_LOGGED or progress.due())
  return (log_now, step % config.eval_every_steps == 0 or is_last,
          step % config.checkpoint_every_steps == 0 or is_last)


def _fetch(pending):
  """[{'step', 'loss', 'learning_rate', ...}] of the (step, device metrics)
  pairs `pending`, fetched to the host (device 0's copy)."""
  return [{'step': s, **{k: float(v[0]) for k, v in m.items()}}
          for s, m in jax.device_get(pending)]


def _full_disk(error):
  """Whether `error`, or an error it was raised from, is a full disk."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                      errno.EDQUOT):
      return True
    error = error.__cause__ or error.__context__
  return False


def _stopped(what, workdir, config, manager):
  """The TrainingStopped of a run stopped from outside, once the checkpoint
  being written (if any) is whole; it names the one to resume from."""
  try:
    manager.wait_until_finished()
  except OSError:  # a save the full disk broke stays unfinished: not listed
    pass
  last = checkpoints.create_manager(workdir, config,
                                    read_only=True).latest_step()
  return errors.TrainingStopped(
      what, None, f'{_kept(workdir, last)}; run the same command to resume')


def _fit(config, workdir, task):
  """`fit` holding the lock: restore, then train, evaluate and checkpoint."""
  logging.info('Training on %d devices (%d local) in %d process(es); '
               'workdir %s.', jax.device_count(), jax.local_device_count(),
               jax.process_count(), workdir)
  manager = checkpoints.create_manager(workdir, config)
  optimizer = create_optimizer(config)
  state = _start(config, workdir, task, manager, optimizer)
  initial_step = int(state.step)
  writer = summaries.create_default_writer(workdir)
  writer.truncate_losses(initial_step)
  logging.info('%s', task.description(state.params))

  train_step = make_train_step(task.loss, optimizer, config)
  check_step = make_check_step(task.loss)
  train_iter = task.train_batches(initial_step)
  state = distributed.replicate(state)
  progress = summaries.Progress(initial_step)
  judged_speed = False
  first_step_secs = None
  pending = []  # (step, device metrics) not yet fetched to the host
  last_good_step = manager.latest_step()
  step = initial_step
  try:
    for step in range(initial_step + 1, config.num_train_steps + 1):
      batch = next(train_iter)
      state, step_metrics = train_step(state, batch, task.frozen)
      pending.append((step, step_metrics))
      if step == initial_step + 1:
        jax.block_until_ready(step_metrics)
        first_step_secs = progress.elapsed()
        progress.mark(step)
      log_now, eval_now, checkpoint_now = _due(config, step, initial_step,
                                               progress)
      if not (log_now or eval_now or checkpoint_now):
        continue

      records, pending = _fetch(pending), []
      _check_losses(records, workdir, last_good_step)
      if eval_now or checkpoint_now:
        _check_state(jax.device_get(check_step(state, batch, task.frozen)),
                     step, workdir, last_good_step)
      writer.write_losses(records)
      if log_now:
        _log_progress(writer, config, step, records, progress,
                      first_step_secs)
        judged_speed = judged_speed or _warn_if_slow(config, step, progress)
      if eval_now:
        result, samples = task.evaluate(state.params)
        task.write_evaluation(writer, step, result, samples)
      if checkpoint_now:
        checkpoints.save(manager, jax_utils.unreplicate(state))
        last_good_step = step
      progress.mark(step)
    manager.wait_until_finished()
  except FloatingPointError:
    manager.wait_until_finished()
    raise
  except KeyboardInterrupt:
    raise _stopped(f'Training interrupted at step {step}', workdir, config,
                   manager) from None
  except Exception as e:  # orbax and the writers wrap a full disk variously
    if not _full_disk(e):
      raise
    raise _stopped(f'The disk is full: training stopped at step {step}',
                   workdir, config, manager) from e
  writer.close()
  return jax.device_get(jax_utils.unreplicate(state))
