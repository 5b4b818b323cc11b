"""The STAU video predictor: encoder, stacked cells scanned over layers and time, decoder.

Frames are NHWC per time step. The model runs t = 0 .. T-2 and predicts frame
t+1 at each step (../shared/STAU_SPEC.md, "Frames in, frames out"). Both loops
are `nn.scan`s, so the compiled program does not grow with the number of
frames or layers (off CPU the layer scan is unrolled by default for speed,
see `resolve_layer_loop`; the parameters are the same either way). The
time-scan carry holds fixed-size ring buffers: per layer the last tau
temporal states and the last tau input spatial states, written at slot
t % tau. Inside one step, the layer scan carries two theta-slot
buffers of the current step's lower-layer states, written at slot k % theta
and masked where fewer than theta layers have been visited. Softmax attention
is invariant to the order of its entries, so ring order equals the
reference's list order.

Collected on request (`mutable=['intermediates']`): alpha (T-1, L, tau, B),
beta (T-1, L, theta, B) and the gates F_T, F_S, U_T, U_S
(T-1, L, B, h, w, C), in ring-slot order (see `ring_order`).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stau_jax import ops
from stau_jax import shapes
from stau_jax.models.cell import CELLS, CONV_OUTPUT, STAUCell


LAYER_LOOPS = ('auto', 'scan', 'unrolled')
REMATS = ('auto', 'none', 'cells')
# Rematerialized cells keep only their convolution outputs for the backward.
_SAVE_CONV_OUTPUTS = jax.checkpoint_policies.save_only_these_names(
    CONV_OUTPUT)


def resolve_layer_loop(layer_loop='auto'):
  """'auto' -> 'scan' on CPU (one compiled layer, compile time flat in the
  layer count), else 'unrolled' (no per-layer loop overhead: 125 -> 101 ms per
  H100 training step of configs/mmnist.py at batch 16)."""
  return ops.resolve_auto('layer_loop', layer_loop, LAYER_LOOPS, 'unrolled',
                          cpu='scan')


def resolve_remat(remat='auto'):
  """'auto' -> 'cells' on CPU, else 'none'.

  'cells' recomputes each cell's normalization, gates and attention in the
  backward pass from its saved convolution outputs instead of storing every
  intermediate: on the 2-core CPU (configs/mmnist.py, batch 8) 8.5 instead
  of 9.0 s per training step and 2.8 instead of 4.6 GB peak memory. Not yet
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


def ring_order(step, size):
  """Ring slots from oldest to newest after `step` + 1 writes at `step % size`.

  Index attention weights or buffers with it to get them in time (or layer)
  order: e.g. `alpha[t][:, ring_order(t - 1, tau)]` lists alpha for steps
  t-tau .. t-1.
  """
  return np.arange(step + 1, step + 1 + size) % size


class Encoder(nn.Module):
  """1x1 conv to C channels, then `num_downsample` stride-2 3x3 convs.

  Returns every output (full resolution first): `recall` adds them back in
  the decoder.
  """
  num_hidden: int
  num_downsample: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, frame):
    x = nn.leaky_relu(nn.Conv(self.num_hidden, (1, 1), dtype=self.dtype,
                              conv_general_dilated=functools.partial(
                                  ops.conv, impl=self.conv_impl),
                              name='embed')(frame), 0.2)
    features = [x]
    for i in range(self.num_downsample):
      x = nn.Conv(self.num_hidden, (3, 3), strides=(2, 2),
                  padding=((1, 1), (1, 1)), dtype=self.dtype,
                  conv_general_dilated=functools.partial(
                      ops.conv, impl=self.conv_impl),
                  name=f'down_{i}')(x)
      x = nn.leaky_relu(x, 0.2)
      features.append(x)
    return features


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose(transpose_kernel=True)` computed by `ops.conv_transpose`.

  Same parameters as flax's: 'kernel' (kh, kw, features, in_features), as
  PyTorch's ConvTranspose2d weight up to axis order, and 'bias' (features,).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int]
  padding: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    """(B, h, w, in_features) -> (B, h', w', features)."""
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        self.kernel_size + (self.features, x.shape[-1]))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = ops.conv_transpose(x, kernel, self.strides, self.padding,
                           impl=self.conv_impl)
    return y + bias


class Decoder(nn.Module):
  """`num_downsample` stride-2 transposed 3x3 convs, then a 1x1 conv to frames.

  Each transposed conv exactly doubles h and w (PyTorch's padding 1,
  output_padding 1); LeakyReLU(0.2) after all but the last; with `recall`,
  the encoder output of the same resolution is added after each.
  """
  num_hidden: int
  num_downsample: int
  frame_channels: int
  recall: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, spatial, encoded):
    x = spatial
    n = self.num_downsample
    for i in range(n):
      x = ConvTranspose(self.num_hidden, (3, 3), strides=(2, 2),
                        padding=((1, 2), (1, 2)), dtype=self.dtype,
                        conv_impl=self.conv_impl, name=f'up_{i}')(x)
      if i < n - 1:
        x = nn.leaky_relu(x, 0.2)
      if self.recall:
        x = x + encoded[n - 1 - i]
    return nn.Conv(self.frame_channels, (1, 1), dtype=self.dtype,
                   conv_general_dilated=functools.partial(
                       ops.conv, impl=self.conv_impl),
                   name='readout')(x)


class _LayerStep(nn.Module):
  """One layer of one time step, scanned over layers (params stacked on axis 0).

  Carry: (spatial input S_t^{k-1}, lower_temporal, lower_spatial), the two
  theta-slot stacks of this step. Per-layer inputs: (k, T_{t-1}^k, temporal
  history, spatial history). Broadcast: the time ring slot t % tau.
  """
  num_hidden: int
  filter_size: int
  theta: int
  cell: str
  residual: bool
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  remat: str = 'auto'

  @nn.compact
  def __call__(self, carry, layer_inputs, time_slot):
    spatial, lower_temporal, lower_spatial = carry
    layer, temporal, temporal_history, spatial_history = layer_inputs
    slot = layer % self.theta
    lower_temporal = lower_temporal.at[slot].set(temporal)
    lower_spatial = lower_spatial.at[slot].set(spatial)
    lower_valid = jnp.arange(self.theta) <= layer
    cell_type = STAUCell
    if resolve_remat(self.remat) == 'cells':
      cell_type = nn.remat(STAUCell, policy=_SAVE_CONV_OUTPUTS)
    new_temporal, new_spatial = cell_type(
        self.num_hidden, self.filter_size, self.cell, self.residual,
        self.dtype, self.conv_impl, name='cell')(
            temporal, spatial, temporal_history, spatial_history,
            lower_temporal, lower_spatial, lower_valid)
    temporal_history = temporal_history.at[time_slot].set(new_temporal)
    spatial_history = spatial_history.at[time_slot].set(spatial)
    return ((new_spatial, lower_temporal, lower_spatial),
            (new_temporal, temporal_history, spatial_history))


class _TimeStep(nn.Module):
  """One time step: choose the input frame, encode, run all layers, decode."""
  num_layers: int
  num_hidden: int
  filter_size: int
  tau: int
  theta: int
  num_downsample: int
  frame_channels: int
  cell: str
  residual: bool
  recall: bool
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  layer_loop: str = 'auto'
  remat: str = 'auto'

  @nn.compact
  def __call__(self, carry, step_inputs):
    temporal, temporal_history, spatial_history, prediction = carry
    frame, true_frame_mask, time_slot = step_inputs
    frame = true_frame_mask * frame + (1 - true_frame_mask) * prediction
    encoded = Encoder(self.num_hidden, self.num_downsample, self.dtype,
                      self.conv_impl, name='encoder')(frame.astype(self.dtype))
    spatial = encoded[-1]
    lower_stack = jnp.zeros((self.theta,) + spatial.shape, spatial.dtype)
    layers = nn.scan(
        _LayerStep, variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True}, in_axes=(0, nn.broadcast),
        length=self.num_layers,
        unroll=(self.num_layers if resolve_layer_loop(self.layer_loop)
                == 'unrolled' else 1))(
            self.num_hidden, self.filter_size, self.theta, self.cell,
            self.residual, self.dtype, self.conv_impl, self.remat,
            name='cells')
    (spatial, _, _), (temporal, temporal_history, spatial_history) = layers(
        (spatial, lower_stack, lower_stack),
        (jnp.arange(self.num_layers), temporal, temporal_history,
         spatial_history), time_slot)
    prediction = Decoder(self.num_hidden, self.num_downsample,
                         self.frame_channels, self.recall, self.dtype,
                         self.conv_impl, name='decoder')(spatial, encoded)
    prediction = prediction.astype(jnp.float32)
    return (temporal, temporal_history, spatial_history, prediction), prediction


class STAUPredictor(nn.Module):
  """The STAU video predictor (and its variants, see `cell.CELLS`).

  `apply(variables, frames, sampling_mask)` with frames (B, T, H, W, c) in
  [0, 1] returns the T-1 predicted frames (B, T-1, H, W, c) for x[1:].
  Attributes mirror `config.model` plus `input_length`; see `create_model`.
  """
  num_layers: int
  num_hidden: int
  filter_size: int
  tau: int
  theta: int
  num_downsample: int
  patch_size: int
  input_length: int
  cell: str = 'stau'
  residual: bool = False
  recall: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  layer_loop: str = 'auto'
  remat: str = 'auto'

  @nn.compact
  def __call__(self, frames, sampling_mask=None):
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

    Returns:
      (B, T-1, H, W, c) float32 predictions of frames[:, 1:].
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

    grid_h = patch_shape[0] // 2**self.num_downsample
    grid_w = patch_shape[1] // 2**self.num_downsample
    state = jnp.zeros((self.num_layers, batch, grid_h, grid_w,
                       self.num_hidden), self.dtype)
    history = jnp.zeros((self.num_layers, self.tau) + state.shape[1:],
                        self.dtype)
    carry = (state, history, history,
             jnp.zeros((batch,) + patch_shape, jnp.float32))
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    step_inputs = (time_major(patches[:, :-1]), time_major(true_frame_mask),
                   jnp.arange(length - 1) % self.tau)
    unroll = nn.scan(
        _TimeStep, variable_broadcast='params',
        variable_axes={'intermediates': 0}, split_rngs={'params': False},
        length=length - 1)(
            self.num_layers, self.num_hidden, self.filter_size, self.tau,
            self.theta, self.num_downsample, patch_shape[-1], self.cell,
            self.residual, self.recall, self.dtype, self.conv_impl,
            self.layer_loop, self.remat, name='unroll')
    _, predictions = unroll(carry, step_inputs)
    return unpatch_frames(time_major(predictions), self.patch_size)


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
  """Raises ValueError naming the first bad `config.model`/`config.data` value."""
  model, data = config.model, config.data
  if model.cell not in CELLS:
    raise ValueError(f'config.model.cell={model.cell!r} is unknown; '
                     f'choose one of {CELLS}.')
  for name in ('num_layers', 'num_hidden', 'tau', 'theta', 'patch_size',
               'filter_size'):
    value = model[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.model.{name} must be a positive integer; '
                       f'got {value!r}.')
  for name, choices in (('conv_impl', ops.CONV_IMPLS),
                        ('layer_loop', LAYER_LOOPS), ('remat', REMATS)):
    if model.get(name, 'auto') not in choices:
      raise ValueError(f'config.model.{name}={model[name]!r} is unknown; '
                       f'choose one of {choices}.')
  if model.filter_size % 2 == 0:
    raise ValueError(f'config.model.filter_size must be odd for "same" '
                     f'padding; got {model.filter_size}.')
  if not isinstance(model.num_downsample, int) or model.num_downsample < 0:
    raise ValueError(f'config.model.num_downsample must be an integer >= 0; '
                     f'got {model.num_downsample!r}.')
  if not 1 <= data.input_length < data.total_length:
    raise ValueError(
        f'Need 1 <= config.data.input_length < config.data.total_length; got '
        f'input_length={data.input_length}, '
        f'total_length={data.total_length}.')
  height, width = data.image_size
  check_frame_shape((1, data.total_length, height, width, data.channels),
                    model.patch_size, model.num_downsample, data.input_length)


def create_model(config, dtype=jnp.float32):
  """Builds the `STAUPredictor` that `config` describes, after validating it."""
  validate_model_config(config)
  model = config.model
  return STAUPredictor(
      num_layers=model.num_layers, num_hidden=model.num_hidden,
      filter_size=model.filter_size, tau=model.tau, theta=model.theta,
      num_downsample=model.num_downsample, patch_size=model.patch_size,
      input_length=config.data.input_length, cell=model.cell,
      residual=model.residual, recall=model.recall,
      conv_impl=model.get('conv_impl', 'auto'),
      layer_loop=model.get('layer_loop', 'auto'),
      remat=model.get('remat', 'auto'), dtype=dtype)


def param_shapes(config):
  """Shapes and dtypes of the parameters of config's model, without computing them."""
  model = create_model(config)
  return jax.eval_shape(
      lambda: init_params(model, config, jax.random.PRNGKey(0)))


def count_params(params):
  """Number of scalars in a parameter tree (arrays or shape structs)."""
  return int(sum(np.prod(np.shape(leaf))
                 for leaf in jax.tree_util.tree_leaves(params)))


def init_params(model, config, rng):
  """Initial parameters for `model` on dummy frames of the configured shape."""
  height, width = config.data.image_size
  frames = jnp.zeros((1, config.data.input_length + 1, height, width,
                      config.data.channels), jnp.float32)
  return model.init(rng, frames)['params']
