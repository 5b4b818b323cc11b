"""Training and evaluation loop: pmapped train step, checkpoints, summaries.

`train_and_evaluate(config, workdir)` trains the model `config` describes on
its dataset, on all local devices (and all hosts after
`distributed.initialize_from_environment`), resuming from the latest
checkpoint in `workdir`. The loop itself, `fit(config, workdir, make_task)`,
trains any `Task` (its state, pmapped steps, batches and evaluation): video
prediction here (`prediction_task`), early action recognition in
recognize.py.

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
import functools
import time
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
from stau_jax import evaluate
from stau_jax import metrics
from stau_jax import models
from stau_jax import sampling
from stau_jax import summaries

NUM_SAMPLES = 4  # test sequences drawn as PNG strips and GIFs per evaluation
FIRST_STEPS_LOGGED = 2  # progress lines also for a run's first steps


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


def create_train_state(config, model, optimizer):
  """A fresh host train state (numpy arrays) from config.seed."""

  def init(key):
    init_rng, sampling_rng = jax.random.split(key)
    params = models.init_params(model, config, init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=sampling_rng)

  return jax.device_get(jax.jit(init)(jax.random.PRNGKey(config.seed)))


def train_step(state, frames, *, model, optimizer, config):
  """One update on this device's share of the global batch (inside pmap).

  Args:
    state: this device's copy of the TrainState.
    frames: (B_device, T, H, W, C) frames in [0, 1].
    model: the Predictor (its dtype is the compute dtype).
    optimizer: from `create_optimizer`.
    config: experiment config.

  Returns:
    (new state, {'loss', 'learning_rate', 'eta'}): the loss (MSE plus the
    unit's auxiliary loss, if any) is the mean over the global batch;
    gradients are averaged over all devices.
  """
  loss_fn = functools.partial(_loss, state=state, frames=frames, model=model,
                              config=config)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grads = jax.lax.pmean(grads, 'batch')
  loss = jax.lax.pmean(loss, 'batch')
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {
      'loss': loss,
      'learning_rate': create_learning_rate_schedule(config)(state.step),
      'eta': sampling.sampling_eta(config, state.step),
  }
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), step_metrics


def _loss(params, *, state, frames, model, config):
  """This device's loss of `params` on `frames` with state.step's sampling
  mask: the MSE plus the unit's auxiliary loss, if any (PredRNN-v2)."""
  device_batch = frames.shape[0]
  mask = sampling.sampling_mask(config, state.rng, state.step,
                                config.batch_size)
  mask = jax.lax.dynamic_slice_in_dim(
      mask, jax.lax.axis_index('batch') * device_batch, device_batch)
  predictions, auxiliary_loss = models.predict_with_auxiliary_loss(
      model, params, frames, mask)
  return jnp.mean(jnp.square(predictions - frames[:, 1:])) + auxiliary_loss


def check_step(state, frames, *, model, config):
  """Whether `state` can be saved (inside pmap): its loss on `frames`.

  The loss a train step reports was computed with the parameters before its
  update; this one is computed with the parameters after it, so a checkpoint
  is only written when the state it holds gives a finite loss.

  Returns:
    {'loss': the global-batch loss of state.params, 'finite': whether every
    parameter and optimizer array is finite}.
  """
  loss = _loss(state.params, state=state, frames=frames, model=model,
               config=config)
  finite = jnp.all(jnp.stack([
      jnp.all(jnp.isfinite(x))
      for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
      if jnp.issubdtype(x.dtype, jnp.inexact)]))
  return {'loss': jax.lax.pmean(loss, 'batch'), 'finite': finite}


def make_train_step(model, optimizer, config):
  """`train_step` jit-compiled and pmapped over devices (axis 'batch')."""
  return jax.pmap(
      functools.partial(train_step, model=model, optimizer=optimizer,
                        config=config),
      axis_name='batch', donate_argnums=(0,))


def make_check_step(model, config):
  """`check_step` pmapped over devices (axis 'batch')."""
  return jax.pmap(functools.partial(check_step, model=model, config=config),
                  axis_name='batch')


def validate_config(config, num_devices, process_count):
  """Raises ValueError naming the first bad setting, before any work starts."""
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

  state: fresh host TrainState (the restore target).
  train_step: pmapped (state, batch) -> (state, step metrics): 'loss' and
    'learning_rate', then any other scalars (logged as `name value`).
  check_step: pmapped (state, batch) -> {'loss', 'finite'}, the loss and
    finiteness of the state after an update (see `check_step`).
  train_batches: start_step -> endless iterator of device batches.
  evaluate: replicated state -> (result, samples); every host calls it.
  write_evaluation: (writer, step, result, samples): logs and writes one
    evaluation with the `summaries.SummaryWriter`; every host calls it.
  description: one line logged at the start (model and parameter count).
  """
  state: TrainState
  train_step: Callable
  check_step: Callable
  train_batches: Callable
  evaluate: Callable
  write_evaluation: Callable
  description: str


def prediction_task(config):
  """The video predictor of `config`, trained and evaluated on its frames."""
  compute_dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = models.create_model(config, dtype=compute_dtype)
  optimizer = create_optimizer(config)
  state = create_train_state(config, model, optimizer)
  eval_step = evaluate.make_eval_step(models.create_model(config), config)
  test_set = data.load_test_set(config)

  def train_batches(start_step):
    return data.create_train_iterator(
        config, num_devices=jax.local_device_count(), start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  def evaluate_state(state):
    digest = data.new_digest()
    result, samples = evaluate.evaluate(
        eval_step, state.params,
        test_set.batches(config.eval_batch_size, digest),
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
      state=state, train_step=make_train_step(model, optimizer, config),
      check_step=make_check_step(model, config), train_batches=train_batches,
      evaluate=evaluate_state,
      write_evaluation=write_evaluation,
      description=(f'Model: {config.model.cell} cell, '
                   f'{models.count_params(state.params)} parameters; '
                   f'{compute_dtype.__name__} compute.'))


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


def _diverged(what, workdir, last_good_step):
  """The FloatingPointError of a run whose loss or parameters became NaN."""
  kept = (f'the last good checkpoint (step {last_good_step}) is kept in '
          f'{workdir}' if last_good_step is not None else
          f'no checkpoint had been written to {workdir}')
  return FloatingPointError(f'{what}; {kept}. Lower config.learning_rate or '
                            f'check the data.')


def _fit(config, workdir, task):
  """`fit` holding the lock."""
  num_devices = jax.local_device_count()
  process_index, process_count = jax.process_index(), jax.process_count()
  logging.info('Training on %d devices (%d local) in %d process(es); '
               'workdir %s.', jax.device_count(), num_devices, process_count,
               workdir)

  manager = checkpoints.create_manager(workdir, config)
  state = checkpoints.restore_or_keep(manager, task.state, config, workdir)
  initial_step = int(state.step)
  if initial_step:
    logging.info('Resuming from the checkpoint of step %d.', initial_step)
    for name, started, current in checkpoints.changed_fields(
        checkpoints.read_config(workdir), config):
      logging.info('Resuming with config.%s = %s (the run started with %s).',
                   name, current, started)
  elif process_index == 0:
    checkpoints.write_config(workdir, config)
  writer = summaries.create_default_writer(workdir)
  writer.truncate_losses(initial_step)
  logging.info('%s', task.description)

  train_iter = task.train_batches(initial_step)
  state = distributed.replicate(state)

  pending = []  # (step, device metrics) not yet fetched to the host
  last_good_step = manager.latest_step()
  timer_step, timer_start = initial_step, time.time()
  last_progress = timer_start
  for step in range(initial_step + 1, config.num_train_steps + 1):
    batch = next(train_iter)
    state, step_metrics = task.train_step(state, batch)
    pending.append((step, step_metrics))
    if step == initial_step + 1:
      jax.block_until_ready(step_metrics)
      logging.info('Compiled and ran the first step in %.1f s.',
                   time.time() - timer_start)
      timer_step, timer_start = step, time.time()
    is_last = step == config.num_train_steps
    log_now = (step % config.log_every_steps == 0 or is_last or
               step <= initial_step + FIRST_STEPS_LOGGED or
               time.time() - last_progress >= summaries.PROGRESS_EVERY_SECS)
    eval_now = step % config.eval_every_steps == 0 or is_last
    checkpoint_now = step % config.checkpoint_every_steps == 0 or is_last
    if not (log_now or eval_now or checkpoint_now):
      continue

    records = [{'step': s, **{k: float(v[0]) for k, v in m.items()}}
               for s, m in jax.device_get(pending)]
    pending = []
    for record in records:
      if not np.isfinite(record['loss']):
        manager.wait_until_finished()
        raise _diverged(f'Loss is {record["loss"]} at step {record["step"]}',
                        workdir, last_good_step)
    if eval_now or checkpoint_now:
      check = jax.device_get(task.check_step(state, batch))
      if not (check['finite'][0] and np.isfinite(check['loss'][0])):
        manager.wait_until_finished()
        what = ('NaN or inf' if not check['finite'][0] else
                f'a loss of {check["loss"][0]}')
        raise _diverged(f'The parameters after step {step} give {what}',
                        workdir, last_good_step)
    writer.write_losses(records)
    if log_now:
      last_progress = time.time()
      steps_per_sec = ((step - timer_step) / (time.time() - timer_start)
                       if step > timer_step else float('nan'))
      remaining = (summaries.format_duration((config.num_train_steps - step) /
                                    steps_per_sec)
                   if steps_per_sec > 0 else '?')
      loss = np.mean([r['loss'] for r in records])
      others = {k: v for k, v in records[-1].items()
                if k not in ('step', 'loss', 'learning_rate')}
      logging.info('step %d/%d | loss %.5f | lr %.3g | %s%.2f steps/s | ETA '
                   '%s', step, config.num_train_steps, loss,
                   records[-1]['learning_rate'],
                   ''.join(f'{k} {v:.3f} | ' for k, v in others.items()),
                   steps_per_sec, remaining)
      writer.scalars({'train/loss': loss,
                      'train/learning_rate': records[-1]['learning_rate'],
                      **{f'train/{k}': v for k, v in others.items()},
                      'train/steps_per_sec': steps_per_sec}, step)
      writer.flush()
    if eval_now:
      result, samples = task.evaluate(state)
      task.write_evaluation(writer, step, result, samples)
    if checkpoint_now:
      checkpoints.save(manager, jax_utils.unreplicate(state))
      last_good_step = step
    timer_step, timer_start = step, time.time()

  manager.wait_until_finished()
  writer.close()
  return jax.device_get(jax_utils.unreplicate(state))
