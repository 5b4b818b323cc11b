"""Scheduled sampling: which model inputs are true frames during training.

The model runs t = 0 .. T-2 and predicts frame t+1 at each step. At a step
whose input may come from the model's own previous prediction, a "true-frame
token" decides per (sequence, step) whether the true frame is fed instead.

* Scheduled sampling (the STAU/MAU/PredRNN reference): the input frames are
  always true; each future input position t = input_length .. T-2 is true
  with probability eta. Training step s (0-based; the reference's iteration
  s + 1) uses

    eta(s) = max(sampling_start_value - (s + 1) * sampling_changing_rate, 0)
             while s + 1 < sampling_stop_step, else 0.

* Reverse scheduled sampling (PredRNN-v2, `config.reverse_scheduled_sampling
  = True`): the input frames 1 .. input_length-1 are also masked, true with
  probability r_eta, which rises from 0.5 to 1 (exponentially with time
  constant r_exp_alpha between r_sampling_step_1 and r_sampling_step_2),
  while eta for the future positions falls linearly from 0.5 to 0 over the
  same steps. Frame 0 is always true. The reference counts iterations from 1;
  step s here is its iteration s + 1.

Masks are drawn with jax.random from `jax.random.fold_in(key, step)` for the
global batch, so they depend only on (key, step): resuming from a checkpoint
and splitting the batch over devices or hosts give the same masks.
"""
import jax
import jax.numpy as jnp


def sampling_eta(config, step):
  """Probability that a future input position gets the true frame at `step`.

  Args:
    config: experiment config (sampling_* and, for reverse scheduled
      sampling, r_sampling_step_* fields).
    step: 0-based training step (int or int array).

  Returns:
    float32 scalar eta in [0, 1].
  """
  iteration = jnp.asarray(step, jnp.float32) + 1
  if config.reverse_scheduled_sampling:
    begin, end = config.r_sampling_step_1, config.r_sampling_step_2
    ramp = 0.5 - 0.5 / (end - begin) * (iteration - begin)
    return jnp.where(iteration < begin, 0.5,
                     jnp.where(iteration < end, ramp, 0.0))
  eta = jnp.maximum(config.sampling_start_value -
                    iteration * config.sampling_changing_rate, 0.0)
  return jnp.where(iteration < config.sampling_stop_step, eta, 0.0)


def reverse_sampling_eta(config, step):
  """Probability that input frame 1 .. input_length-1 is true (reverse mode).

  Returns a float32 scalar r_eta in [0.5, 1] for the 0-based `step`.
  """
  iteration = jnp.asarray(step, jnp.float32) + 1
  begin, end = config.r_sampling_step_1, config.r_sampling_step_2
  ramp = 1.0 - 0.5 * jnp.exp(-(iteration - begin) / config.r_exp_alpha)
  return jnp.where(iteration < begin, 0.5, jnp.where(iteration < end, ramp,
                                                     1.0))


def num_masked_steps(config):
  """Steps the mask covers: T - input_length - 1, or T - 2 in reverse mode."""
  num_future = config.data.total_length - config.data.input_length - 1
  if config.reverse_scheduled_sampling:
    return num_future + config.data.input_length - 1
  return num_future


def sampling_mask(config, key, step, batch_size):
  """True-frame mask for the global batch at `step`.

  Args:
    config: experiment config.
    key: PRNG key of the run; the mask uses `fold_in(key, step)`.
    step: 0-based training step.
    batch_size: global batch size.

  Returns:
    float32 (batch_size, num_masked_steps(config), 1, 1, 1) of 0/1: the
    model's `sampling_mask`. Without reverse scheduled sampling it covers the
    future input positions input_length .. T-2; with it, positions 1 .. T-2.
  """
  uniform = jax.random.uniform(jax.random.fold_in(key, step),
                               (batch_size, num_masked_steps(config)))
  threshold = jnp.full((num_masked_steps(config),), sampling_eta(config, step))
  if config.reverse_scheduled_sampling:
    num_inputs = config.data.input_length - 1
    threshold = threshold.at[:num_inputs].set(
        reverse_sampling_eta(config, step))
  mask = (uniform < threshold).astype(jnp.float32)
  return mask[:, :, None, None, None]


def validate_sampling_config(config):
  """Raises ValueError naming the first bad scheduled-sampling setting."""
  if not 0 <= config.sampling_start_value <= 1:
    raise ValueError(f'config.sampling_start_value must be in [0, 1]; got '
                     f'{config.sampling_start_value}.')
  if config.sampling_changing_rate < 0:
    raise ValueError(f'config.sampling_changing_rate must be >= 0; got '
                     f'{config.sampling_changing_rate}.')
  if config.reverse_scheduled_sampling:
    if not 0 <= config.r_sampling_step_1 < config.r_sampling_step_2:
      raise ValueError(
          'Reverse scheduled sampling needs 0 <= config.r_sampling_step_1 < '
          f'config.r_sampling_step_2; got {config.r_sampling_step_1} and '
          f'{config.r_sampling_step_2}.')
    if config.r_exp_alpha <= 0:
      raise ValueError(f'config.r_exp_alpha must be > 0; got '
                       f'{config.r_exp_alpha}.')
