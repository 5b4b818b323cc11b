r"""Times one training step of the configured model, its forward pass and compilation.

  python -m stau_jax.benchmark --config=configs/mmnist.py \
      --config.batch_size=8 --steps=5

After one warm-up call each, times --steps calls of (a) a full training step:
forward over all frames, the MSE loss of Algorithm 1 with an all-zero
scheduled-sampling mask, backward and an Adam update; and (b) the forward pass
alone. Inputs are fixed uniform random frames, so no input pipeline is timed
(see `stau_jax.data.benchmark` for that). `config.half_precision` computes
in bfloat16 with float32 parameters, as training does. Prints a table, then as
its last line one JSON object: train_step_s and forward_s (medians),
compile_s (the training step), forward_compile_s, peak_rss_mb (peak resident
memory of this process), peak_device_mb (accelerator memory, where the
backend reports it), train_step_mb (what XLA plans for one training step:
arguments, outputs, temporaries), forward_flops_per_sequence (the
multiply-add FLOPs of its convolutions and matmuls, `count_flops`),
train_gflop_per_s and forward_gflop_per_s (GFLOP/s achieved, the training
step counted as 3x the forward pass, the usual convention), samples_per_s,
device, params, and the shapes timed.
`--profile_dir=DIR` also records a profiler trace of a few training steps
(Perfetto/TensorBoard format) for finding where the time goes.
"""
import json
import math
import os
import resource
import time

from absl import app
from absl import flags
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from stau_jax import cli
from stau_jax import data
from stau_jax import host_memory
from stau_jax import onednn
from stau_jax import ops
from stau_jax import outputs
from stau_jax import train
from stau_jax.models import predictor

FLAGS = flags.FLAGS


def make_train_step(model, optimizer):
  """Jitted (params, opt_state, frames, mask) -> (params, opt_state, loss)."""

  def loss_fn(params, frames, sampling_mask):
    predictions = model.apply({'params': params}, frames, sampling_mask)
    return jnp.mean(jnp.square(predictions - frames[:, 1:]))

  @jax.jit
  def train_step(params, opt_state, frames, sampling_mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, frames, sampling_mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def _compile(fn, *args):
  """Returns (compiled fn, seconds spent tracing, lowering and compiling)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _median_seconds(fn, steps):
  """Median wall time of `steps` calls of fn() after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def sub_jaxprs(eqn):
  """The jaxprs inside one equation's parameters (scan, pjit, remat, ...)."""
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def count_flops(jaxpr):
  """Multiply-add FLOPs (2 per multiply-add) of the matmuls and
  convolutions (lax's and oneDNN's) of a jaxpr, scan bodies counted `length`
  times (XLA's cost analysis counts a loop body once). while bodies count
  once."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    outputs = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * outputs * math.prod(lhs[i] for i in contracting)
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec
      total += 2 * outputs * rhs[spec[1]] * math.prod(rhs[i] for i in spec[2:])
    elif name == 'ffi_call' and eqn.params['target_name'] == onednn.TARGET:
      total += onednn.call_flops(eqn.params['attributes'],
                                 *(v.aval.shape for v in eqn.invars),
                                 eqn.outvars[0].aval.shape)
    inner = sum(count_flops(sub) for sub in sub_jaxprs(eqn))
    total += inner * (eqn.params['length'] if name == 'scan' else 1)
  return total


def _program_mb(compiled):
  """Memory one call of a compiled program needs (arguments, outputs and
  temporaries, from XLA's memory analysis), in MB; None if not reported."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return round(total / 2**20, 1)


def _peak_device_mb(device):
  """Peak accelerator memory in MB, or None where the backend keeps no stats."""
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return round(stats['peak_bytes_in_use'] / 2**20, 1)


def validate(config, profile_dir=None):
  """Raises ValueError (OutputError for `profile_dir`) naming the first
  setting `run` cannot time, before any compilation."""
  predictor.validate_model_config(config)
  data.validate_batch_size(config, 'batch_size')
  train.validate_numbers(config)
  if profile_dir:
    try:
      os.makedirs(profile_dir, exist_ok=True)
    except OSError as e:
      raise outputs.OutputError(f'Cannot create --profile_dir: {e.strerror}',
                                profile_dir, 'choose a writable folder') from e
    if not os.access(profile_dir, os.W_OK):
      raise outputs.OutputError('--profile_dir is not writable', profile_dir,
                                'choose a writable folder')


def run(config, steps=5, profile_dir=None):
  """Builds the configured model, times it and returns the results dict.

  With `profile_dir`, three more training steps run under `jax.profiler`
  and their trace is written there. The config is checked first
  (`validate`).
  """
  validate(config, profile_dir)
  model = predictor.create_model(config, config.half_precision)
  rng = jax.random.PRNGKey(config.seed)
  params = predictor.init_params(model, config, rng)
  optimizer = optax.adam(config.learning_rate)
  opt_state = optimizer.init(params)

  data = config.data
  batch = config.batch_size
  height, width = data.image_size
  frames = jax.random.uniform(
      jax.random.PRNGKey(1),
      (batch, data.total_length, height, width, data.channels))
  p = config.model.patch_size
  sampling_mask = jnp.zeros(
      (batch, data.total_length - data.input_length - 1, height // p,
       width // p, p * p * data.channels))

  train_step, compile_s = _compile(
      make_train_step(model, optimizer), params, opt_state, frames,
      sampling_mask)
  forward_flops = count_flops(jax.make_jaxpr(model.apply)(
      {'params': params}, frames, sampling_mask).jaxpr)
  forward = jax.jit(model.apply)
  forward, forward_compile_s = _compile(
      forward, {'params': params}, frames, sampling_mask)

  train_step_s = _median_seconds(
      lambda: train_step(params, opt_state, frames, sampling_mask), steps)
  forward_s = _median_seconds(
      lambda: forward({'params': params}, frames, sampling_mask), steps)
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(3):
        jax.block_until_ready(
            train_step(params, opt_state, frames, sampling_mask))
  device = jax.devices()[0]
  return {
      'train_step_s': round(train_step_s, 4),
      'forward_s': round(forward_s, 4),
      'compile_s': round(compile_s, 2),
      'forward_compile_s': round(forward_compile_s, 2),
      'peak_rss_mb': round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'peak_device_mb': _peak_device_mb(device),
      'train_step_mb': _program_mb(train_step),
      'forward_flops_per_sequence': round(forward_flops / batch),
      'train_gflop_per_s': round(3 * forward_flops / train_step_s / 1e9, 1),
      'forward_gflop_per_s': round(forward_flops / forward_s / 1e9, 1),
      'samples_per_s': round(batch / train_step_s, 3),
      'device': f'{device.platform}:{device.device_kind}',
      'compute_dtype': predictor.precision_name(config.half_precision),
      'conv_impl': ops.resolve_conv_impl(config.model.conv_impl),
      'huge_pages': host_memory.huge_pages_enabled(),
      'params': predictor.count_params(params),
      'batch_size': batch,
      'total_length': data.total_length,
      'num_layers': config.model.num_layers,
      'steps': steps,
  }


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  cli.define_config_file(
      'config', 'configs/mmnist.py', 'Config file (model and data shape).')
  flags.DEFINE_integer('steps', 5, 'Timed calls of each function.',
                       lower_bound=1)
  flags.DEFINE_string('profile_dir', None,
                      'If set, write a profiler trace of 3 training steps here.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  results = run(FLAGS.config, FLAGS.steps, FLAGS.profile_dir)
  print(f'{FLAGS.config.model.cell} benchmark ({FLAGS.config.name}, {results["device"]}, '
        f'batch {results["batch_size"]}, {results["total_length"]} frames, '
        f'{results["num_layers"]} layers, median of {results["steps"]}):')
  rows = [('training step', f'{results["train_step_s"]:.3f} s'),
          ('forward pass', f'{results["forward_s"]:.3f} s'),
          ('compile (train step)', f'{results["compile_s"]:.1f} s'),
          ('compile (forward)', f'{results["forward_compile_s"]:.1f} s'),
          ('samples / s', f'{results["samples_per_s"]:.2f}'),
          ('peak resident memory', f'{results["peak_rss_mb"]:.0f} MB'),
          ('train step (XLA plan)',
           'n/a' if results['train_step_mb'] is None
           else f'{results["train_step_mb"]:.0f} MB'),
          ('forward GFLOP / seq.',
           f'{results["forward_flops_per_sequence"] / 1e9:.2f}'),
          ('GFLOP/s train / fwd', f'{results["train_gflop_per_s"]:.0f} / '
                                  f'{results["forward_gflop_per_s"]:.0f}'),
          ('peak device memory',
           'n/a' if results['peak_device_mb'] is None
           else f'{results["peak_device_mb"]:.0f} MB'),
          ('compute dtype', results['compute_dtype']),
          ('parameters', f'{results["params"]:,}'),
          ('convolution', results['conv_impl'])]
  for name, value in rows:
    print(f'  {name:<22}{value:>14}')
  print(json.dumps(results))


if __name__ == '__main__':
  cli.run(main, define_flags)
