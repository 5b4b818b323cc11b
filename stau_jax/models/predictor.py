"""The video predictor: a front-end, stacked recurrent units, scans over time.

Frames are NHWC per time step. The model runs t = 0 .. T-2 and predicts frame
t+1 at each step (docs/model.md, "Frames in, frames out"). The
front-end (frontends.py) encodes the chosen input frame, the unit's layers
(unit.py: any unit of registry.py) run bottom to top, the front-end decodes
the top layer's output. Both loops are `nn.scan`s: the compiled program
does not grow with the number of frames, nor with the number of layers when
the layer scan is rolled (`layer_loop='scan'`; by default the layers are
unrolled for speed, see `resolve_layer_loop`; the parameters are the same
either way).
Everything a unit carries through time (e.g. STAU's ring buffers) lives in
fixed-size arrays in the time scan's carry.

What the unit records (its `unit.Unit.records`, e.g. STAU's attention
weights and gates, an LSTM's gates) comes with the predictions, by name,
from `predict_with_records`; a unit's auxiliary training loss (unit.py) from
`predict_with_auxiliary_loss`. Neither is computed otherwise.
"""
import functools
import os
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from stau_jax import ops
from stau_jax import shapes
from stau_jax.models import frontends
from stau_jax.models import registry
from stau_jax.models import unit


LAYER_LOOPS = ('auto', 'scan', 'unrolled', 'per_layer')
REMATS = ('auto', 'none', 'cells')
# Name of every convolution output, for rematerialization policies.
CONV_OUTPUT = 'conv_output'
# Rematerialized layers keep only their convolution outputs for the backward.
_SAVE_CONV_OUTPUTS = jax.checkpoint_policies.save_only_these_names(
    CONV_OUTPUT)


def resolve_layer_loop(layer_loop='auto'):
  """'auto' -> 'per_layer' on CPU, else 'unrolled' (docs/speed.md).

  'scan' compiles one layer (an nn.scan): compile time flat in the layer
  count. 'unrolled' is that scan unrolled: each layer in the program, their
  states sliced from and stacked into per-group stacks. 'per_layer' calls
  each layer on its slice of the stacked parameters and keeps each layer's
  state apart: no stacks, faster forward passes and compiles on CPU. All
  three take the same parameters and give the same results.
  """
  return ops.resolve_auto('layer_loop', layer_loop, LAYER_LOOPS, 'unrolled',
                          cpu='per_layer')


def resolve_remat(remat='auto'):
  """'auto' -> 'cells' on CPU, else 'none'.

  'cells' recomputes each layer's normalization, gates and attention in the
  backward pass from its saved convolution outputs instead of storing every
  intermediate, and the encoder's full-resolution features from the frame:
  on the CPU a little faster and much less memory (docs/speed.md). Not yet
  measured on GPU, so 'none' stays the default there.
  """
  return ops.resolve_auto('remat', remat, REMATS, 'none', cpu='cells')


def patch_frames(frames, patch_size):
  """Space-to-depth: (..., H, W, c) -> (..., H/p, W/p, p*p*c), order (p_row, p_col, c)."""
  if patch_size == 1:
    return frames
  *lead, height, width, channels = frames.shape
  p = patch_size
  x = frames.reshape(*lead, height // p, p, width // p, p, channels)
  x = jnp.swapaxes(x, -4, -3)
  return x.reshape(*lead, height // p, width // p, p * p * channels)


def unpatch_frames(patches, patch_size):
  """Depth-to-space, the inverse of `patch_frames`."""
  if patch_size == 1:
    return patches
  *lead, h, w, depth = patches.shape
  p = patch_size
  x = patches.reshape(*lead, h, w, p, p, depth // (p * p))
  x = jnp.swapaxes(x, -4, -3)
  return x.reshape(*lead, h * p, w * p, depth // (p * p))


def cpu_has_bfloat16(cpuinfo='/proc/cpuinfo'):
  """Whether this CPU computes in bfloat16 natively: x86's AVX512-BF16 or
  AMX-BF16, Arm's BF16, as `cpuinfo` lists them; True where it cannot be
  read. STAU_JAX_CPU_BFLOAT16=1 or 0 in the environment says so instead."""
  override = os.environ.get('STAU_JAX_CPU_BFLOAT16')
  if override in ('0', '1'):
    return override == '1'
  return _cpuinfo_lists_bfloat16(cpuinfo)


@functools.lru_cache(maxsize=None)
def _cpuinfo_lists_bfloat16(cpuinfo):
  """`cpu_has_bfloat16` without the override, `cpuinfo` read once."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return True
  listed = re.search(r'^(?:flags|Features)\s*:(.*)$', text, re.M)
  if listed is None:
    return True
  return bool(set(listed.group(1).split()) & {'avx512_bf16', 'amx_bf16',
                                              'bf16'})


def compute_dtypes(half_precision, backend=None):
  """(dtype, operand_dtype) of `config.half_precision` on `backend`.

  dtype: the states' and all math's; operand_dtype: what convolutions cast
  their operands to (accumulating in dtype), None for dtype itself.
  float32: (float32, None). Half precision off CPU: (bfloat16, None), all
  compute in bfloat16. On CPU, mixed precision: (float32, bfloat16), only the
  convolutions' operands in bfloat16 (XLA:CPU runs bfloat16 matmuls faster
  than float32 ones but bfloat16 elementwise ops several times slower); on a
  CPU without bfloat16 instructions (`cpu_has_bfloat16`), where bfloat16 is
  emulated and 3-5x slower than float32, (float32, None).
  """
  if not half_precision:
    return jnp.float32, None
  if (backend or jax.default_backend()) == 'cpu':
    if not cpu_has_bfloat16():
      return jnp.float32, None
    return jnp.float32, jnp.bfloat16
  return jnp.bfloat16, None


def precision_name(half_precision):
  """What `compute_dtypes` means here in words: 'float32', 'bfloat16',
  'bfloat16 convolutions, float32 math', or, for half precision on a CPU
  without bfloat16 instructions, 'float32 (no bfloat16 instructions on this
  CPU)'."""
  dtype, operand_dtype = compute_dtypes(half_precision)
  if operand_dtype is not None:
    return (f'{jnp.dtype(operand_dtype).name} convolutions, '
            f'{jnp.dtype(dtype).name} math')
  if half_precision and dtype == jnp.float32:
    return 'float32 (no bfloat16 instructions on this CPU)'
  return jnp.dtype(dtype).name


def conv_factory(dtype=jnp.float32, conv_impl='auto', operand_dtype=None):
  """`nn.Conv` computing in `dtype` with the `conv_impl` lowering, its
  operands cast to `operand_dtype` when given (`ops.conv`).

  Its outputs are named CONV_OUTPUT, which is all that rematerialized layers
  keep for the backward pass (`resolve_remat`). Its attribute `fast_groups`
  says whether grouped convolutions run as fast as their groups apart
  (oneDNN's), for `unit.conv_norms`.
  """
  def tagged_conv(*args, **kwargs):
    return checkpoint_name(ops.conv(*args, impl=conv_impl,
                                    operand_dtype=operand_dtype, **kwargs),
                           CONV_OUTPUT)
  factory = functools.partial(nn.Conv, dtype=dtype,
                              conv_general_dilated=tagged_conv)
  # oneDNN runs a grouped convolution as fast as its groups apart, in one
  # call (unit.conv_norms); XLA's lowerings are not measured grouped.
  factory.fast_groups = ops.resolve_conv_impl(conv_impl) == 'onednn'
  return factory


class LayerNorm(nn.Module):
  """`nn.LayerNorm` (use_fast_variance=False) with the same parameters and
  values, its scale and bias shared by the batch through
  `ops.broadcast_leading`, whose gradient XLA:CPU computes fast.

  Attributes:
    epsilon, reduction_axes, feature_axes: as nn.LayerNorm's.
    dtype: the result's dtype (the statistics are float32 or wider).
  """
  epsilon: float = 1e-5
  reduction_axes: tuple[int, ...] = (-1,)
  feature_axes: tuple[int, ...] = (-1,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(B, ..., features) -> the same shape, normalized over reduction_axes."""
    axes = tuple(axis % x.ndim for axis in self.reduction_axes)
    features = sorted(axis % x.ndim for axis in self.feature_axes)
    param_shape = [x.shape[axis] for axis in features]
    feature_shape = [x.shape[axis] if axis in features else 1
                     for axis in range(x.ndim)]
    stats = jnp.promote_types(x.dtype, jnp.float32)
    x32 = x.astype(stats)
    mean = jnp.mean(x32, axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axes, keepdims=True)
    share = functools.partial(ops.broadcast_leading, shape=x.shape)
    if feature_shape[1:] != list(x.shape[1:]) or feature_shape[0] != 1:
      share = functools.partial(jnp.broadcast_to, shape=x.shape)
    scale = share(self.param('scale', nn.initializers.ones, param_shape,
                             jnp.float32).reshape(feature_shape))
    bias = share(self.param('bias', nn.initializers.zeros, param_shape,
                            jnp.float32).reshape(feature_shape))
    y = (x32 - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


def norm_factory(dtype=jnp.float32):
  """LayerNorm over (h, w, C) jointly with elementwise (h, w, C) scale and
  bias, as PyTorch's nn.LayerNorm([C, h, w]) (eps 1e-5)."""
  return functools.partial(LayerNorm, epsilon=1e-5,
                           reduction_axes=(-3, -2, -1),
                           feature_axes=(-3, -2, -1), dtype=dtype)


def _stacked(tree, count):
  """`tree` repeated on a new leading axis of size `count`."""
  return jax.tree_util.tree_map(
      lambda leaf: jnp.broadcast_to(leaf, (count,) + leaf.shape), tree)


class _TimeStep(nn.Module):
  """One time step: choose the input frame, encode, run all layers, decode.

  Carry: (per-group layer states, stacked over the group's layers or with
  `layer_params` a tuple of them, the flow when it crosses time, the
  previous prediction). Inputs: (frame, mask of where it is true, step t).
  Broadcast: `layer_params`, None or {group name: a tuple of each layer's
  parameters} for layer_loop='per_layer' (`_layers`).
  """
  groups: tuple[unit.LayerGroup, ...]
  encoder: Callable[..., nn.Module]
  decoder: Callable[..., nn.Module]
  return_hidden: bool
  dtype: Any = jnp.float32
  layer_loop: str = 'auto'
  remat: str = 'auto'

  def _layers(self, group, inputs, flow, states, step, first_layer,
              layer_params):
    """Runs one group's layers.

    Returns ((top outputs, flow), (new states, per-layer outputs stacked or
    None)). With `layer_params` ({group name: a tuple of each layer's
    parameters}) the states are a tuple of per-layer states (`_per_layer`),
    else stacked on axis 0 (`_scanned_layers`).
    """
    if layer_params is not None:
      return self._per_layer(group, inputs, flow, states, step, first_layer,
                             layer_params[group.name])
    return self._scanned_layers(group, inputs, flow, states, step,
                                first_layer)

  def _per_layer(self, group, inputs, flow, states, step, first_layer,
                 params_per_layer):
    """The group's layers called one by one on their own parameters (slices
    of those `_scanned_layers` creates at init, taken once per forward pass
    by `Predictor`), each layer's state its own: nothing is sliced from or
    stacked into a group stack inside the time scan.
    What the layers sow (RECORDS, AUXILIARY) is stacked over layers as
    nn.scan stacks it."""
    layer = group.layer(parent=None)
    collections = [c for c in (unit.RECORDS, unit.AUXILIARY)
                   if self.is_mutable_collection(c)]

    def apply_layer(params, inputs, flow, state, step, index):
      return layer.apply({'params': params}, inputs, flow, state, step,
                         index, mutable=collections)

    if resolve_remat(self.remat) == 'cells':
      # The layer index stays a Python int, as without remat; no CSE
      # barrier (the time scan already keeps the recomputation apart), so
      # XLA hoists what does not change between steps (the grouped pairs'
      # kernels) out of the backward time loop.
      apply_layer = jax.checkpoint(apply_layer, policy=_SAVE_CONV_OUTPUTS,
                                   static_argnums=(5,), prevent_cse=False)
    new_states, outputs, sown = [], [], []
    for i, (params, state) in enumerate(zip(params_per_layer, states)):
      (inputs, flow, state), variables = apply_layer(
          params, inputs, flow, state, step, first_layer + i)
      new_states.append(state)
      outputs.append(inputs)
      sown.append(variables)
    for collection in collections:
      if sown[0].get(collection):
        self.put_variable(collection, group.name, jax.tree_util.tree_map(
            lambda *values: jnp.stack(values),
            *(variables[collection] for variables in sown)))
    hidden = jnp.stack(outputs) if self.return_hidden else None
    return (inputs, flow), (tuple(new_states), hidden)

  def _scanned_layers(self, group, inputs, flow, states, step, first_layer):
    """Runs one group's layers: an nn.scan with parameters stacked on axis 0.

    Returns ((top outputs, flow), (new states, per-layer outputs or None)).
    A group of one layer (e.g. the bottom layer reading patched frames) may
    change the inputs' channels, so its inputs are broadcast in and its
    outputs come out as the scan's output instead of its carry.
    """
    single = group.count == 1

    def body(layer, carry, layer_inputs, inputs, step):
      if single:
        flow = carry
      else:
        inputs, flow = carry
      state, index = layer_inputs
      outputs, flow, state = layer(inputs, flow, state, step, index)
      hidden = outputs if self.return_hidden or single else None
      return (flow if single else (outputs, flow)), (state, hidden)

    if resolve_remat(self.remat) == 'cells':
      body = nn.remat(body, policy=_SAVE_CONV_OUTPUTS, prevent_cse=False)
    unrolled = resolve_layer_loop(self.layer_loop) == 'unrolled'
    scan = nn.scan(body, variable_axes={'params': 0, unit.RECORDS: 0,
                                        unit.AUXILIARY: 0},
                   split_rngs={'params': True},
                   in_axes=(0, nn.broadcast, nn.broadcast),
                   length=group.count, unroll=group.count if unrolled else 1)
    indices = first_layer + jnp.arange(group.count)
    layer = group.layer(name=group.name)
    if single:
      flow, (states, outputs) = scan(layer, flow, (states, indices), inputs,
                                     step)
      return ((outputs[0], flow),
              (states, outputs if self.return_hidden else None))
    return scan(layer, (inputs, flow), (states, indices), None, step)

  @nn.compact
  def __call__(self, carry, step_inputs, layer_params):
    states, flow, prediction = carry
    frame, true_frame_mask, step = step_inputs
    frame = true_frame_mask * frame + (1 - true_frame_mask) * prediction
    encoded = self.encoder(name='encoder')(frame.astype(self.dtype))
    x = encoded[-1]
    bottom = self.groups[0].layer(parent=None)
    if not bottom.flow_crosses_time:
      flow = bottom.initial_flow(*x.shape[:3], self.dtype)
    new_states, hidden, first_layer = [], [], 0
    for group, group_states in zip(self.groups, states):
      (x, flow), (group_states, group_hidden) = self._layers(
          group, x, flow, group_states, step, first_layer, layer_params)
      new_states.append(group_states)
      hidden.append(group_hidden)
      first_layer += group.count
    prediction = self.decoder(name='decoder')(x, encoded).astype(jnp.float32)
    outputs = prediction
    if self.return_hidden:
      outputs = (prediction, jnp.concatenate(hidden, axis=0))
    if not bottom.flow_crosses_time:
      flow = ()
    return (tuple(new_states), flow, prediction), outputs


class Predictor(nn.Module):
  """The video predictor: a front-end around stacked recurrent units.

  `apply(variables, frames, sampling_mask)` with frames (B, T, H, W, c) in
  [0, 1] returns the T-1 predicted frames (B, T-1, H, W, c) for x[1:].
  Build it with `create_model(config)`.

  Attributes:
    groups: the unit's layers, bottom first (unit.LayerGroup).
    encoder, decoder: the front-end's module factories (frontends.build).
    in_features: channels the encoder gives the bottom layer.
    patch_size, num_downsample: patching and the front-end's downsampling,
      which fix the hidden grid (H/p/2^n, W/p/2^n).
    input_length: frames always observed.
    auxiliary_loss: the unit's auxiliary loss module factory, or None
      (unit.Unit.auxiliary_loss); its parameters are 'auxiliary_loss'.
    records: what the unit's layers record (unit.Unit.records).
  """
  groups: tuple[unit.LayerGroup, ...]
  encoder: Callable[..., nn.Module]
  decoder: Callable[..., nn.Module]
  in_features: int
  patch_size: int
  num_downsample: int
  input_length: int
  dtype: Any = jnp.float32
  layer_loop: str = 'auto'
  remat: str = 'auto'
  auxiliary_loss: Callable[..., nn.Module] | None = None
  records: tuple[unit.Record, ...] = ()

  @nn.compact
  def __call__(self, frames, sampling_mask=None, return_hidden=False):
    """Predicts frames 1..T-1.

    Args:
      frames: (B, T, H, W, c). Frames at t >= input_length are only read
        where `sampling_mask` is 1; they may be zeros for pure prediction.
      sampling_mask: broadcastable to (B, T - input_length - 1, H/p, W/p,
        p*p*c): 1 feeds the true frame at step input_length + i, 0 the
        model's own previous prediction. None (the default) is all zeros:
        pure autoregressive prediction. A mask of T - 2 steps instead
        (reverse scheduled sampling, PredRNN-v2) covers steps 1 .. T-2:
        every input after the first.
      return_hidden: also return every layer's output (its hidden state)
        at every step.

    Returns:
      (B, T-1, H, W, c) float32 predictions of frames[:, 1:]; with
      `return_hidden`, the pair (predictions, hidden) with hidden
      (B, T-1, L, h, w, C) in the compute dtype, h x w the hidden grid.
    """
    check_frame_shape(frames.shape, self.patch_size, self.num_downsample,
                      self.input_length)
    batch, length = frames.shape[:2]
    patches = patch_frames(frames.astype(jnp.float32), self.patch_size)
    patch_shape = patches.shape[2:]
    if sampling_mask is None:
      sampling_mask = jnp.zeros(
          (batch, length - self.input_length - 1, 1, 1, 1), jnp.float32)
    sampling_mask = jnp.asarray(sampling_mask, jnp.float32)
    if sampling_mask.ndim != 5:
      raise ValueError(f'sampling_mask must be 5-D (B, steps, H/p, W/p, '
                       f'p*p*c) or broadcastable as such; got shape '
                       f'{sampling_mask.shape}.')
    # A mask over steps 1 .. T-2 (reverse scheduled sampling) also decides
    # the inputs after the first; otherwise all input_length inputs are true.
    num_always_true = (1 if sampling_mask.shape[1] == length - 2
                       else self.input_length)
    masked = jnp.broadcast_to(
        sampling_mask, (batch, length - 1 - num_always_true) + patch_shape)
    true_frame_mask = jnp.concatenate(
        [jnp.ones((batch, num_always_true) + patch_shape, jnp.float32),
         masked], axis=1)

    grid = (batch, patch_shape[0] // 2**self.num_downsample,
            patch_shape[1] // 2**self.num_downsample)
    in_features = self.in_features
    # Initialization runs the layer scans, which create the parameters.
    per_layer = (resolve_layer_loop(self.layer_loop) == 'per_layer'
                 and not self.is_initializing())
    states = []
    for group in self.groups:
      layer = group.layer(parent=None)
      num_steps = ({'num_steps': length - 1}
                   if getattr(layer, 'state_needs_num_steps', False) else {})
      initial = layer.initial_state(*grid, in_features, self.dtype,
                                    **num_steps)
      if per_layer:
        states.append((initial,) * group.count)
      else:
        states.append(_stacked(initial, group.count))
      in_features = layer.num_hidden
    bottom = self.groups[0].layer(parent=None)
    flow = (bottom.initial_flow(*grid, self.dtype)
            if bottom.flow_crosses_time else ())
    carry = (tuple(states), flow,
             jnp.zeros((batch,) + patch_shape, jnp.float32))
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    step_inputs = (time_major(patches[:, :-1]), time_major(true_frame_mask),
                   jnp.arange(length - 1))
    unroll = nn.scan(
        _TimeStep, variable_broadcast='params',
        variable_axes={unit.RECORDS: 0, unit.AUXILIARY: 0},
        split_rngs={'params': False}, in_axes=(0, nn.broadcast),
        length=length - 1)(
            self.groups, self.encoder, self.decoder, return_hidden,
            self.dtype, self.layer_loop, self.remat, name='unroll')
    layer_params = None
    if per_layer:  # each layer's slice of its group's stacked parameters
      scanned = self.variables['params']['unroll']
      layer_params = {group.name: tuple(
          jax.tree_util.tree_map(lambda leaf, i=i: leaf[i],
                                 scanned[group.name])
          for i in range(group.count)) for group in self.groups}
    _, outputs = unroll(carry, step_inputs, layer_params)
    if (self.auxiliary_loss is not None
        and self.is_mutable_collection(unit.AUXILIARY)):
      sown = unroll.variables[unit.AUXILIARY]
      terms = jax.tree_util.tree_map(
          lambda *groups: jnp.concatenate(groups, axis=1),
          *(sown[group.name] for group in self.groups))
      self.sow(unit.AUXILIARY, 'loss',
               self.auxiliary_loss(name='auxiliary_loss')(terms))
    if return_hidden:
      predictions, hidden = outputs
      # (T-1, L, B, h, w, C) -> (B, T-1, L, h, w, C)
      hidden = jnp.moveaxis(hidden, 2, 0)
      return unpatch_frames(time_major(predictions), self.patch_size), hidden
    return unpatch_frames(time_major(outputs), self.patch_size)


def check_frame_shape(shape, patch_size, num_downsample, input_length):
  """Raises ValueError unless `shape` is (B, T, H, W, c) that the model accepts."""
  if len(shape) != 5:
    raise ValueError(f'frames must be (batch, time, height, width, channels); '
                     f'got shape {tuple(shape)}.')
  _, length, height, width, _ = shape
  shapes.check_frame_size('Frame size', height, width, patch_size,
                          num_downsample)
  if length <= input_length:
    raise ValueError(f'frames has {length} time steps but input_length is '
                     f'{input_length}: need at least input_length + 1.')


def validate_model_config(config):
  """Raises ValueError naming the first bad `config.model`/`config.data` value.

  Checks the fields every unit reads here; the unit checks its own when its
  layers are built (`create_model`, unit.py).

  Returns config's model (float32, `create_model`), built once for the
  unit's own checks.
  """
  model, data = config.model, config.data
  registry.get(model.cell)
  for name in ('num_layers', 'num_hidden', 'patch_size', 'filter_size'):
    value = model[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.model.{name} must be a positive integer; '
                       f'got {value!r}.')
  for name, choices in (('conv_impl', ops.CONV_IMPLS),
                        ('layer_loop', LAYER_LOOPS), ('remat', REMATS),
                        ('frontend', frontends.FRONTENDS)):
    if model[name] not in choices:
      raise ValueError(f'config.model.{name}={model[name]!r} is unknown; '
                       f'choose one of {choices}.')
  ops.resolve_conv_impl(model.conv_impl)  # 'onednn' where it cannot run
  if model.filter_size % 2 == 0:
    raise ValueError(f'config.model.filter_size must be odd for "same" '
                     f'padding; got {model.filter_size}.')
  if not isinstance(model.num_downsample, int) or model.num_downsample < 0:
    raise ValueError(f'config.model.num_downsample must be an integer >= 0; '
                     f'got {model.num_downsample!r}.')
  if model.frontend == 'patch' and model.num_downsample:
    raise ValueError(f"config.model.frontend='patch' feeds patched frames to "
                     f'the bottom layer without downsampling: set '
                     f'config.model.num_downsample=0 (got '
                     f'{model.num_downsample}).')
  if not isinstance(model.layer_norm, bool):
    raise ValueError(f'config.model.layer_norm must be True or False; got '
                     f'{model.layer_norm!r}.')
  if not 1 <= data.input_length < data.total_length:
    raise ValueError(
        f'Need 1 <= config.data.input_length < config.data.total_length; got '
        f'input_length={data.input_length}, '
        f'total_length={data.total_length}.')
  shapes.check_frame_size('config.data.image_size', *data.image_size,
                          model.patch_size, model.num_downsample)
  return create_model(config)  # the unit's own checks (STAU's tau, PredRNN++'s 2 layers)


def create_model(config, half_precision=False):
  """Builds the `Predictor` that `config` describes, in float32 or in the
  half precision of this backend (`compute_dtypes`).

  The config is trusted: the entry points (train.validate_config, loading an
  export, the CLIs) validate it once with `validate_model_config`; configs
  read from files are upgraded first (upgrade.py).
  """
  model = config.model
  conv_impl = model.conv_impl
  dtype, operand_dtype = compute_dtypes(half_precision)
  conv = conv_factory(dtype, conv_impl, operand_dtype)
  conv_transpose = functools.partial(frontends.ConvTranspose, dtype=dtype,
                                     conv_impl=conv_impl,
                                     operand_dtype=operand_dtype)
  frame_channels = model.patch_size**2 * config.data.channels
  encoder, decoder, in_features = frontends.build(
      model, frame_channels, conv, conv_transpose,
      recompute_full_resolution=resolve_remat(model.remat) == 'cells')
  entry = registry.get(model.cell)
  groups = entry.layer_groups(model, conv, norm_factory(dtype))
  auxiliary_loss = (entry.auxiliary_loss(model, conv)
                    if entry.auxiliary_loss else None)
  return Predictor(
      groups=groups, encoder=encoder, decoder=decoder, in_features=in_features,
      patch_size=model.patch_size, num_downsample=model.num_downsample,
      input_length=config.data.input_length, dtype=dtype,
      layer_loop=model.layer_loop, remat=model.remat,
      auxiliary_loss=auxiliary_loss, records=entry.records)


def predict_with_auxiliary_loss(model, params, frames, sampling_mask=None):
  """(predictions, the unit's auxiliary training loss), for training.

  The loss is the float32 scalar of the unit's `auxiliary_loss` (already
  weighted, e.g. PredRNN-v2's decouple_beta x decoupling loss), or 0.0 for
  units without one, which then run exactly as `model.apply` does.
  """
  if model.auxiliary_loss is None:
    return model.apply({'params': params}, frames, sampling_mask), 0.0
  predictions, sown = model.apply({'params': params}, frames, sampling_mask,
                                  mutable=[unit.AUXILIARY])
  return predictions, sown[unit.AUXILIARY]['loss'][0]


def predict_with_records(model, params, frames, sampling_mask=None):
  """(predictions, records): what the unit records while predicting.

  Args as `model.apply`. `records` is {name: (B, T-1, L, ...)} for each of
  the unit's `model.records` (unit.Record: what each is and its shape per
  sample), over the T-1 steps and all L layers, bottom
  first; NaN at layers that do not record that name. The predictions are
  those of `model.apply`.
  """
  predictions, state = model.apply({'params': params}, frames, sampling_mask,
                                   mutable=[unit.RECORDS])
  recorded = state.get(unit.RECORDS, {}).get('unroll', {})
  per_group = [_group_records(recorded.get(group.name, {}), group.name)
               for group in model.groups]
  names = {name for group in per_group for name in group}
  declared = [record.name for record in model.records]
  if names != set(declared):
    raise AssertionError(
        f'The unit records {sorted(names)} but declares {declared} '
        f'(unit.Unit.records): a bug in the unit.')
  records = {}
  for name in declared:
    like = next(values[name] for values in per_group if name in values)
    stacked = jnp.concatenate(
        [values.get(name, jnp.full(
            like.shape[:1] + (group.count,) + like.shape[2:], jnp.nan,
            like.dtype)) for values, group in zip(per_group, model.groups)],
        axis=1)
    records[name] = jnp.moveaxis(stacked, 2, 0)  # (T-1, L, B, ...) -> B first
  return predictions, records


def _group_records(tree, group_name):
  """{name: (T-1, layers, B, ...)} from one layer group's RECORDS tree."""
  records = {}
  for path, sown in flax.traverse_util.flatten_dict(tree).items():
    name = path[-1]
    if name in records or len(sown) != 1:
      raise AssertionError(f'A layer of {group_name!r} records {name!r} '
                           f'more than once: a bug in the unit.')
    records[name] = sown[0]
  return records


def param_shapes(config, model=None):
  """Shapes and dtypes of the parameters of config's model (`model` when
  built already), without computing them."""
  model = create_model(config) if model is None else model
  return jax.eval_shape(
      lambda: init_params(model, config, jax.random.PRNGKey(0)))


def count_params(params):
  """Number of scalars in a parameter tree (arrays or shape structs)."""
  return int(sum(np.prod(np.shape(leaf))
                 for leaf in jax.tree_util.tree_leaves(params)))


# XLA options for programs that run once (initialization): no optimization
# passes. The values agree with an optimized build to float32 rounding.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def init_params(model, config, rng):
  """Initial parameters for `model` on dummy frames of the configured shape.

  Traceable. Called with a concrete key it compiles itself as one program
  without optimizations (INIT_COMPILER_OPTIONS): flax creates scanned
  layers' parameters inside the forward pass's loops, which op by op or
  optimized would take seconds for a program that runs once.
  """
  if not isinstance(rng, jax.core.Tracer):
    return jax.jit(functools.partial(init_params, model, config),
                   compiler_options=INIT_COMPILER_OPTIONS)(rng)
  height, width = config.data.image_size
  frames = jnp.zeros((1, config.data.input_length + 1, height, width,
                      config.data.channels), jnp.float32)
  return model.init(rng, frames)['params']
