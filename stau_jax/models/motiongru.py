"""MotionRNN's MotionGRU on PredRNN (Wu et al. 2021), as thuml/MotionRNN's
core/models/MotionRNN_PredRNN.py computes it.

Each layer is PredRNN's ST-LSTM (predrnn.SpatioTemporalLSTMCell) with a
motion highway; every layer but the top one follows it with a MotionGRU
block that moves its hidden state along learned offsets. One layer at one
time step (see unit.py), C = num_hidden, (h, w) the hidden grid:

  flow (M, V): the spatiotemporal memory M (the zigzag, as PredRNN) and the
    motion highway V, both (B, h, w, C). The bottom layer restarts V every
    step from its input: V = conv_first_v(x) (1x1, no bias).
  cell: h', c', M' = ST-LSTM(x, h, c, M) with
    h' = o * tanh(conv_last([c', M'])) + (1 - o) * V;  then V <- h'.
  MotionGRU block (layers 0 .. L-2), on a half-resolution grid of C/4 maps:
    z = enc(h')                       (filter_size conv, stride 2, pad f//2)
    u = sigmoid(update([z, D]));  r = sigmoid(reset([z, D]))   (3x3 convs)
    D' = D * (1 - u) + tanh(output([z, r * D])) * u + mean'
    mean' = mean + (D - mean) / 2
    y = Warp(z, D')
    g = sigmoid(gate([dec(y), h']));  h' <- g * dec(y) + (1 - g) * h'
  where D, mean are (B, h/2, w/2, 18), dec a ConvTranspose (4x4, stride 2,
  padding 1): the offsets of a 3x3 neighbourhood, 9 row offsets then 9
  column offsets, neighbour n = 3 * i + j at (i - 1, j - 1).
  Warp(z, D): for each pixel (a, b) and neighbour n, bilinearly sample z at
  (a + i - 1 + D_row[n], b + j - 1 + D_col[n]) with zeros outside z
  (the reference pads z by one zero pixel and clamps the corner indices and
  positions into the padded map, which gives exactly this), multiply by the
  gate sigmoid(warp_gate(z)) (3x3 conv, 9 channels), and mix the 9 samples
  with a 3x3 kernel (`conv`, no bias): the reference lays them out as 3x3
  tiles and convolves with stride 3, so do we.

State per layer: (h, c), plus (D, mean) in layers with a MotionGRU block.
Outputs: h' (after the block) to the layer above. The layers are three
groups, bottom ('cell_0', with conv_first_v), middle ('cells', L-2 layers)
and top ('cell_top', no MotionGRU), so MotionRNN needs num_layers >= 2, and
an even hidden grid (the block halves and doubles it).

Reference quirks:
- Its forward starts h, c, M, D and mean from nn.init.xavier_normal_ noise,
  drawn anew on every call; we start from zeros (the test vectors patch
  that initialiser to zeros).
- It zero-initialises the kernels of update, reset, output and warp_gate;
  here they get flax's default init, as every conv: with flax's zero biases
  a zero kernel would leave the update and reset gates without gradient
  (PyTorch's random biases avoid that in the reference).
- Its backward hooks meant to scale those gates' gradients by 0.1 rebind
  local names and return None, so they change nothing; there is nothing to
  port.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from stau_jax.models import frontends
from stau_jax.models import predrnn
from stau_jax.models import unit

NEIGHBOURHOOD = 3
# Offset channels: a row and a column offset per neighbour.
OFFSET_CHANNELS = 2 * NEIGHBOURHOOD**2

# The reference's module lists for the parts of a layer outside its cell.
_TORCH_LISTS = {'enc': 'enc_list', 'motion': 'motion_list',
                'dec': 'dec_list', 'gate': 'gate_list'}


def bilinear_sample(image, rows, cols):
  """Samples `image` (B, H, W, C) at float pixel positions, zeros outside.

  rows, cols: (B, *S) positions (row 0 .. H-1 and column 0 .. W-1 are the
  pixel centres). Returns (B, *S, C): the bilinear interpolation of the
  image extended by zeros, as the reference computes it: pad by one zero
  pixel, clamp the positions into the padded map (so outside points fall on
  the zero border), then mix its four corners.
  """
  batch, height, width, channels = image.shape
  padded = jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)))
  flat = padded.reshape(batch, -1, channels)
  rows = jnp.clip(rows + 1, 0, height + 1)
  cols = jnp.clip(cols + 1, 0, width + 1)
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_frac, col_frac = rows - row0, cols - col0
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
  row1 = jnp.minimum(row0 + 1, height + 1)
  col1 = jnp.minimum(col0 + 1, width + 1)

  def corner(row, col, weight):
    index = (row * (width + 2) + col).reshape(batch, -1, 1)
    values = jnp.take_along_axis(flat, index, axis=1)
    return weight[..., None] * values.reshape(rows.shape + (channels,))

  return (corner(row0, col0, (1 - row_frac) * (1 - col_frac))
          + corner(row1, col1, row_frac * col_frac)
          + corner(row0, col1, (1 - row_frac) * col_frac)
          + corner(row1, col0, row_frac * (1 - col_frac)))


class Warp(nn.Module):
  """MotionRNN's Warp: gated 3x3 neighbourhood sampling along offsets.

  (z (B, h, w, C), offsets (B, h, w, 18)) -> (B, h, w, C). Parameters
  'warp_gate' (3x3 conv to 9 gates) and 'conv' (3x3 stride-3, no bias), as
  the reference names them.
  """
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, inputs, offsets):
    batch, height, width, channels = inputs.shape
    k = NEIGHBOURHOOD
    gates = nn.sigmoid(self.conv(k * k, (3, 3), padding=((1, 1), (1, 1)),
                                 name='warp_gate')(inputs))
    # Neighbour n = k * i + j sits at (i - k // 2, j - k // 2).
    shift = np.arange(k) - k // 2
    base_rows = (np.arange(height)[:, None, None, None]
                 + shift[None, None, :, None])
    base_cols = (np.arange(width)[None, :, None, None]
                 + shift[None, None, None, :])
    offsets = offsets.astype(jnp.float32).reshape(
        batch, height, width, 2, k, k)
    samples = bilinear_sample(inputs.astype(jnp.float32),
                              base_rows + offsets[..., 0, :, :],
                              base_cols + offsets[..., 1, :, :])
    samples = samples.astype(inputs.dtype) * gates.reshape(
        batch, height, width, k, k, 1)
    # (B, h, w, i, j, C) -> k x k tiles (B, h * k, w * k, C).
    tiles = samples.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, height * k, width * k, channels)
    return self.conv(channels, (k, k), strides=(k, k), padding='VALID',
                     use_bias=False, name='conv')(tiles)


class MotionGRU(nn.Module):
  """(z, D, mean) -> (Warp(z, D'), D', mean'), the module docstring's GRU.

  z (B, h, w, C); D and mean (B, h, w, 18).
  """
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, inputs, offsets, mean):
    conv = functools.partial(self.conv, OFFSET_CHANNELS, (3, 3),
                             padding=((1, 1), (1, 1)))
    stacked = jnp.concatenate([inputs, offsets], axis=-1)
    update = nn.sigmoid(conv(name='update')(stacked))
    reset = nn.sigmoid(conv(name='reset')(stacked))
    candidate = jnp.tanh(conv(name='output')(
        jnp.concatenate([inputs, offsets * reset], axis=-1)))
    new_mean = mean + 0.5 * (offsets - mean)
    new_offsets = offsets * (1 - update) + candidate * update + new_mean
    return (Warp(self.conv, name='warp')(inputs, new_offsets), new_offsets,
            new_mean)


class MotionRNNLayer(unit.BiasFreeConvModule):
  """One MotionRNN (PredRNN) layer at one time step.

  bottom: restarts the motion highway from the input (conv_first_v).
  motion: follows the cell with a MotionGRU block (all layers but the top).
  """
  bottom: bool = False
  motion: bool = True

  flow_crosses_time = True

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    hidden = unit.zeros(batch, height, width, self.num_hidden, dtype)
    if not self.motion:
      return hidden, hidden
    if height % 2 or width % 2:
      raise ValueError(
          f'motiongru halves and doubles the hidden grid, which must be '
          f'even; got {height}x{width}: choose image_size, patch_size and '
          f'num_downsample so that H/p/2^n and W/p/2^n are even.')
    offsets = unit.zeros(batch, height // 2, width // 2, OFFSET_CHANNELS,
                         dtype)
    return hidden, hidden, offsets, offsets

  def initial_flow(self, batch, height, width, dtype):
    zeros = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return zeros, zeros

  @nn.compact
  def __call__(self, inputs, flow, state, step, layer):
    del step, layer
    memory, highway = flow
    if self.bottom:
      highway = self.conv(self.num_hidden, (1, 1), use_bias=False,
                          name='conv_first_v')(inputs)
    hidden, cell, memory, _ = predrnn.SpatioTemporalLSTMCell(
        self.num_hidden, self.filter_size, self.layer_norm, self.conv,
        self.norm, name='cell')(inputs, state[0], state[1], memory, highway)
    highway = hidden
    if not self.motion:
      return hidden, (memory, highway), (hidden, cell)
    pad = self.filter_size // 2
    encoded = self.conv(self.num_hidden // 4,
                        (self.filter_size, self.filter_size), strides=(2, 2),
                        padding=((pad, pad), (pad, pad)), name='enc')(hidden)
    moved, offsets, mean = MotionGRU(self.conv, name='motion')(
        encoded, state[2], state[3])
    decoded = frontends.ConvTranspose(
        self.num_hidden, (4, 4), (2, 2), ((2, 2), (2, 2)), dtype=hidden.dtype,
        name='dec')(moved)
    gate = nn.sigmoid(self.conv(
        self.num_hidden, (self.filter_size, self.filter_size), padding='SAME',
        name='gate')(jnp.concatenate([decoded, hidden], axis=-1)))
    hidden = gate * decoded + (1 - gate) * hidden
    return hidden, (memory, highway), (hidden, cell, offsets, mean)


def layer_groups(model, conv, norm):
  """MotionRNN's layers for `config.model`: bottom, middle and top groups."""
  if model.num_layers < 2:
    raise ValueError(f'motiongru puts MotionGRU blocks between layers: it '
                     f'needs config.model.num_layers >= 2; got '
                     f'{model.num_layers}.')
  if model.num_hidden < 4:
    raise ValueError(f'motiongru moves num_hidden // 4 channels: it needs '
                     f'config.model.num_hidden >= 4; got {model.num_hidden}.')
  layer = functools.partial(MotionRNNLayer, model.num_hidden,
                            model.filter_size, model.layer_norm,
                            conv, norm)
  groups = (unit.LayerGroup(functools.partial(layer, bottom=True), 1,
                            'cell_0'),)
  if model.num_layers > 2:
    groups += (unit.LayerGroup(layer, model.num_layers - 2, 'cells'),)
  return groups + (unit.LayerGroup(functools.partial(layer, motion=False), 1,
                                   'cell_top'),)


def torch_key(path, layer):
  """Key in MotionRNN_PredRNN.RNN's state_dict of the parameter at `path`
  inside layer `layer`: conv_first_v, `{enc,motion,dec,gate}_list.{layer}.`
  for the MotionGRU block, the cell as OpenSTL's (unit.torch_key)."""
  if path[0] == 'conv_first_v':
    return 'conv_first_v.weight'
  if path[0] in _TORCH_LISTS:
    names = ['weight' if name == 'kernel' else name for name in path[1:]]
    return '.'.join([_TORCH_LISTS[path[0]], str(layer)] + names)
  return unit.torch_key(path, layer)
