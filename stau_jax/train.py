"""Training and evaluation loop: pmapped train step, checkpoints, summaries.

`train_and_evaluate(config, workdir)` trains the model `config` describes on
its dataset, on all local devices (and all hosts after
`distributed.initialize_from_environment`), resuming from the latest
checkpoint in `workdir`.

Workdir layout:
  config.json            the config of the run (checked on resume)
  checkpoints/<step>/    orbax checkpoints, the last config.keep_checkpoints
  train_losses.jsonl     one line per step: step, loss, learning_rate, eta
  eval/step_<N>.json     config.eval_metrics: per-frame and mean (+ step_<N>.txt)
  samples/step_<N>.png   strips of a few test sequences (truth over prediction)
  samples/step_<N>_<i>.gif
  events.out.tfevents.*  TensorBoard: train/*, eval/*, samples
"""
import functools
import json
import os
import time
from typing import Any

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
from stau_jax import visualize

LOSSES_FILE = 'train_losses.jsonl'
NUM_SAMPLES = 4  # test sequences drawn as PNG strips and GIFs per evaluation


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
    model: the STAUPredictor (its dtype is the compute dtype).
    optimizer: from `create_optimizer`.
    config: experiment config.

  Returns:
    (new state, {'loss', 'learning_rate', 'eta'}): the loss is the mean over
    the global batch; gradients are averaged over all devices.
  """
  device_batch = frames.shape[0]
  mask = sampling.sampling_mask(config, state.rng, state.step,
                                config.batch_size)
  mask = jax.lax.dynamic_slice_in_dim(
      mask, jax.lax.axis_index('batch') * device_batch, device_batch)

  def loss_fn(params):
    predictions = model.apply({'params': params}, frames, mask)
    return jnp.mean(jnp.square(predictions - frames[:, 1:]))

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


def make_train_step(model, optimizer, config):
  """`train_step` jit-compiled and pmapped over devices (axis 'batch')."""
  return jax.pmap(
      functools.partial(train_step, model=model, optimizer=optimizer,
                        config=config),
      axis_name='batch', donate_argnums=(0,))


def validate_config(config, num_devices, process_count):
  """Raises ValueError naming the first bad setting, before any work starts."""
  models.validate_model_config(config)
  data.validate_data_config(config, num_devices, process_count)
  sampling.validate_sampling_config(config)
  evaluate.validate_eval_config(config)
  for name in ('num_train_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'log_every_steps', 'lr_decay_every_steps', 'keep_checkpoints'):
    if not isinstance(config[name], int) or config[name] < 1:
      raise ValueError(f'config.{name} must be a positive integer; got '
                       f'{config[name]!r}.')
  if config.learning_rate <= 0 or not 0 < config.lr_decay_rate <= 1:
    raise ValueError(f'Need config.learning_rate > 0 and 0 < '
                     f'config.lr_decay_rate <= 1; got {config.learning_rate} '
                     f'and {config.lr_decay_rate}.')


def read_losses(workdir):
  """The per-step records of WORKDIR/train_losses.jsonl, in order."""
  path = os.path.join(workdir, LOSSES_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_losses(workdir, step):
  """Drops records after `step`: a killed run wrote them past its checkpoint."""
  records = [r for r in read_losses(workdir) if r['step'] <= step]
  path = os.path.join(workdir, LOSSES_FILE)
  with open(path + '.tmp', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  os.replace(path + '.tmp', path)


def _format_duration(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _write_evaluation(workdir, writer, config, step, result, samples):
  """Logs and writes one evaluation: table, JSON, TensorBoard, PNG and GIFs."""
  table = metrics.format_table(result)
  logging.info('Evaluation at step %d on %d test sequences:\n%s', step,
               result['count'], table)
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  name = os.path.join(workdir, 'eval', f'step_{step:06d}')
  with open(name + '.json', 'w') as f:
    json.dump({'step': step, **result}, f, indent=2)
  with open(name + '.txt', 'w') as f:
    f.write(table + '\n')
  writer.scalars({f'eval/{k}': v for k, v in result['mean'].items()}, step)
  if samples and len(samples['frames']):
    strip = visualize.samples_strip(samples['frames'], samples['predictions'],
                                    config.data.input_length)
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
    prefix = os.path.join(workdir, 'samples', f'step_{step:06d}')
    visualize.save_png(prefix + '.png', strip)
    writer.image('samples', strip, step)
    for i, (frames, predictions) in enumerate(
        zip(samples['frames'], samples['predictions'])):
      visualize.save_gif(f'{prefix}_{i}.gif', frames, predictions,
                         config.data.input_length)
  writer.flush()


def train_and_evaluate(config, workdir):
  """Trains and periodically evaluates; resumes from workdir's last checkpoint.

  Args:
    config: experiment config (see configs/mmnist.py).
    workdir: run directory (see the module docstring for its layout).

  Returns:
    The final host TrainState.

  Raises:
    checkpoints.CheckpointError: the workdir holds a run that cannot be
      resumed with this config (nothing is overwritten).
    FloatingPointError: the loss became NaN or inf (the last good checkpoint
      is kept).
  """
  num_devices = jax.local_device_count()
  process_index, process_count = jax.process_index(), jax.process_count()
  is_chief = process_index == 0
  validate_config(config, num_devices, process_count)
  logging.info('Training on %d devices (%d local) in %d process(es); '
               'workdir %s.', jax.device_count(), num_devices, process_count,
               workdir)

  compute_dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = models.create_model(config, dtype=compute_dtype)
  optimizer = create_optimizer(config)
  state = create_train_state(config, model, optimizer)
  manager = checkpoints.create_manager(workdir, config)
  state = checkpoints.restore_or_keep(manager, state, config, workdir)
  initial_step = int(state.step)
  if is_chief:
    if initial_step:
      logging.info('Resuming from the checkpoint of step %d.', initial_step)
    else:
      checkpoints.write_config(workdir, config)
    _truncate_losses(workdir, initial_step)
    writer = summaries.SummaryWriter(workdir)
  num_params = models.count_params(state.params)
  logging.info('Model: %s cell, %d parameters; %s compute.',
               config.model.cell, num_params, compute_dtype.__name__)

  train_iter = data.create_train_iterator(
      config, num_devices=num_devices, start_step=initial_step,
      process_index=process_index, process_count=process_count)
  p_train_step = make_train_step(model, optimizer, config)
  eval_step = evaluate.make_eval_step(models.create_model(config), config)
  state = distributed.replicate(state)

  pending = []  # (step, device metrics) not yet fetched to the host
  last_good_step = manager.latest_step()
  timer_step, timer_start = initial_step, time.time()
  for step in range(initial_step + 1, config.num_train_steps + 1):
    state, step_metrics = p_train_step(state, next(train_iter))
    pending.append((step, step_metrics))
    if step == initial_step + 1:
      jax.block_until_ready(step_metrics)
      logging.info('Compiled and ran the first step in %.1f s.',
                   time.time() - timer_start)
      timer_step, timer_start = step, time.time()
    is_last = step == config.num_train_steps
    log_now = step % config.log_every_steps == 0 or is_last
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
        kept = (f'the last good checkpoint (step {last_good_step}) is kept in '
                f'{workdir}' if last_good_step is not None else
                f'no checkpoint had been written to {workdir}')
        raise FloatingPointError(
            f'Loss is {record["loss"]} at step {record["step"]}; {kept}. Lower '
            f'config.learning_rate or check the data.')
    if is_chief:
      with open(os.path.join(workdir, LOSSES_FILE), 'a') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    if log_now:
      steps_per_sec = ((step - timer_step) / (time.time() - timer_start)
                       if step > timer_step else float('nan'))
      remaining = (_format_duration((config.num_train_steps - step) /
                                    steps_per_sec)
                   if steps_per_sec > 0 else '?')
      loss = np.mean([r['loss'] for r in records])
      logging.info('step %d/%d | loss %.5f | lr %.3g | eta %.3f | %.2f steps/s '
                   '| ETA %s', step, config.num_train_steps, loss,
                   records[-1]['learning_rate'], records[-1]['eta'],
                   steps_per_sec, remaining)
      if is_chief:
        writer.scalars({'train/loss': loss,
                        'train/learning_rate': records[-1]['learning_rate'],
                        'train/eta': records[-1]['eta'],
                        'train/steps_per_sec': steps_per_sec}, step)
        writer.flush()
    if eval_now:
      result, samples = evaluate.evaluate(
          eval_step, state.params, data.create_test_iterator(config),
          config.num_eval_batches, NUM_SAMPLES, evaluate.expected_test_size(
              config, config.eval_batch_size, config.num_eval_batches))
      if is_chief:
        _write_evaluation(workdir, writer, config, step, result, samples)
    if checkpoint_now:
      checkpoints.save(manager, jax_utils.unreplicate(state))
      last_good_step = step
    timer_step, timer_start = step, time.time()

  manager.wait_until_finished()
  if is_chief:
    writer.close()
  return jax.device_get(jax_utils.unreplicate(state))
