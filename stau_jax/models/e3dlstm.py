"""Eidetic 3D LSTM (E3D-LSTM, Wang et al. 2019), as OpenSTL's
Eidetic3DLSTMCell and E3DLSTM_Model compute it.

Every layer works on a window of D = 2 time steps: the bottom layer's input
is the window [x_{t-1}, x_t] of its last two inputs (x_{-1} = 0), and the
states h, c are (B, D, h, w, C). OpenSTL's 3D convolutions (`tf_Conv3d`:
kernel (D, k, k), no depth padding, then nearest interpolation back to
depth D) span the whole window, so each is a 2-D k x k convolution of the
window's slices concatenated depth-major on channels, (B, h, w, D*C_in),
whose output is repeated over the D depths; that is how we compute them.
Bias-free, then LayerNorm over (D, h, w, channels) jointly with elementwise
scale and bias if `config.model.layer_norm` (OpenSTL's nn.LayerNorm([C, D,
h, w])). With r the conv outputs split in channel order:

  i_h, g_h, r_h, o_h = conv_h(h);  i_x, g_x, r_x, o_x, i'_x, g'_x, f'_x = conv_x(x)
  i = sigmoid(i_x + i_h);  r = sigmoid(r_x + r_h);  g = tanh(g_x + g_h)
  c' = LayerNorm_c(c + Attn(r, C_hist)) + i * g
  i_m, f_m, g_m, m_m = conv_gm(M)
  M' = sigmoid(f'_x + f_m + 1) * tanh(m_m) + sigmoid(i'_x + i_m) * tanh(g'_x + g_m)
  o = tanh(o_x + o_h + conv_new_cell(c') + conv_new_gm(M'))
  h' = tanh(conv_last([c', M'])) * sigmoid(o)       (conv_last: 1x1x1)

The layer passes h' up as (B, h, w, D*C), depth-major, and the 'patch'
front-end's 1x1 readout on it is OpenSTL's Conv3d readout with kernel and
stride (D, 1, 1) (convert_torch folds such Conv3d kernels into 2-D ones).

The cell records (RECORDS) i, r, g, i_M, f_M, g_M and sigmoid(o), each
(B, D, h, w, C).

The eidetic attention Attn(r, C_hist) reads every cell state the layer
has had: C_hist at step t = [c_{-1} = 0, c_0, ..., c_{t-1}], t + 1 states,
the zero initial state included. OpenSTL concatenates them along the
channel axis (dim 1 of (B, C, D, h, w)) and then reshapes query, keys and
values with a raw `reshape(B, -1, C)` of that channels-first memory, with
no transpose: a "row" is C consecutive numbers of the flattened (C, D, h,
w) array, which mixes channels and positions. Each state is a whole
number of rows (D*h*w), so the keys are the states' rows stacked, and the
softmax runs over all rows of all t + 1 states at once:

  Attn(r, C_hist) = unrows(softmax(rows(r) rows(C_hist)^T) rows(C_hist))

We keep `rows(c)` of every step in a buffer of T-1 slots (the most a run
of T frames needs: `state_needs_num_steps`), write slot t at step t and
mask the slots not yet written, so the compiled program does not grow with
T. At t = 0 the only state is the zero one: the attention is zero.

Quirks of OpenSTL's code, reproduced:
- Each cell returns the global memory M it was given, not M', so M is
  always the model's initial zeros. conv_gm(M) is therefore the LayerNorm
  bias of conv_gm (layer_norm) or zero: we keep only that bias (parameter
  'memory_bias'); conv_gm's kernel and LayerNorm weight multiply zeros and
  are skipped on conversion (UNUSED_TORCH_KEYS).
- LayerNorm_c (`_norm_c_t`) is applied whether or not layer_norm is set.
- OpenSTL hardcodes the kernel (2, 5, 5); we use `config.model.filter_size`
  for its spatial part (OpenSTL's Moving MNIST config has filter_size 5 and
  layer_norm 0, which is its behaviour).
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from stau_jax.models import unit

# Time steps in a window (OpenSTL's window_length; window_stride is 1).
WINDOW = 2
FORGET_BIAS = 1.0
# LayerNorm over (D, h, w, C) jointly, as nn.LayerNorm([C, D, h, w]).
_WINDOW_AXES = (-4, -3, -2, -1)
# OpenSTL parameters its forward pass multiplies by the always-zero memory.
UNUSED_TORCH_KEYS = r'cell_list\.\d+\.conv_gm\.(0\.conv3d|1)\.weight$'

# Each (D, h, w, C): the window's D depths.
RECORDS = (
    unit.Record('i', 'input gate sigmoid(i_x + i_h) of c'),
    unit.Record('r', 'recall gate sigmoid(r_x + r_h): the eidetic query'),
    unit.Record('g', 'candidate tanh(g_x + g_h) of c', value_range=(-1.0, 1.0)),
    unit.Record('i_M', "input gate sigmoid(i'_x + i_m) of the memory M"),
    unit.Record('f_M', "forget gate sigmoid(f'_x + f_m + 1) of M"),
    unit.Record('g_M', "candidate tanh(g'_x + g_m) of M",
                value_range=(-1.0, 1.0)),
    unit.Record('o', 'output gate sigmoid(o)'),
)


def flatten_window(x):
  """(B, D, h, w, C) -> (B, h, w, D*C), depth-major."""
  batch, depth, height, width, channels = x.shape
  return jnp.moveaxis(x, 1, 3).reshape(batch, height, width, depth * channels)


def _rows(x):
  """(B, D, h, w, C) -> (B, D*h*w, C): PyTorch's raw reshape(B, -1, C) of the
  channels-first (B, C, D, h, w) tensor."""
  return jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1, x.shape[-1])


def _unrows(rows, shape):
  """The inverse of `_rows` for a tensor of `shape` (B, D, h, w, C)."""
  batch, depth, height, width, channels = shape
  return jnp.moveaxis(rows.reshape(batch, channels, depth, height, width), 1,
                      -1)


def eidetic_attention(query, history, valid):
  """OpenSTL's `_attn(query, C_hist, C_hist)` over the valid history slots.

  Args:
    query: (B, D, h, w, C), the recall gate r.
    history: (B, S, D*h*w, C), `_rows` of a cell state per slot.
    valid: (S,) bool, the slots holding states.

  Returns:
    (B, D, h, w, C).
  """
  logits = jnp.einsum('bxc,bsyc->bxsy', _rows(query), history)
  logits = jnp.where(valid[:, None], logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=(-2, -1))
  return _unrows(jnp.einsum('bxsy,bsyc->bxc', weights, history), query.shape)


class WindowConvNorm(nn.Module):
  """OpenSTL's tf_Conv3d (kernel (D, k, k)) and optional LayerNorm.

  (B, h, w, D*C_in) depth-major window -> (B, D, h, w, features): a 'same'
  bias-free 2-D conv, repeated over the D depths, then (if `layer_norm`)
  LayerNorm over (D, h, w, features) with elementwise scale and bias.
  """
  features: int
  filter_size: int
  layer_norm: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, window):
    y = self.conv(self.features, (self.filter_size, self.filter_size),
                  padding='SAME', use_bias=False, name='conv')(window)
    y = jnp.broadcast_to(y[:, None], (y.shape[0], WINDOW) + y.shape[1:])
    if self.layer_norm:
      y = self.norm(reduction_axes=_WINDOW_AXES, feature_axes=_WINDOW_AXES,
                    name='norm')(y)
    return y


class Eidetic3DLSTMCell(unit.BiasFreeConvModule):
  """One E3D-LSTM update: (window, h, c, C_hist) -> (h', c'), each (B, D, h, w, C)."""

  @nn.compact
  def __call__(self, window, hidden, cell, history, valid):
    c = self.num_hidden
    conv = functools.partial(WindowConvNorm, filter_size=self.filter_size,
                             layer_norm=self.layer_norm, conv=self.conv,
                             norm=self.norm)
    i_h, g_h, r_h, o_h = jnp.split(
        conv(4 * c, name='conv_h')(flatten_window(hidden)), 4, axis=-1)
    i_x, g_x, r_x, o_x, i_xm, g_xm, f_xm = jnp.split(
        conv(7 * c, name='conv_x')(window), 7, axis=-1)
    input_gate = nn.sigmoid(i_x + i_h)
    recall_gate = nn.sigmoid(r_x + r_h)
    candidate = jnp.tanh(g_x + g_h)
    new_cell = cell + eidetic_attention(recall_gate, history, valid)
    new_cell = (self.norm(reduction_axes=_WINDOW_AXES,
                          feature_axes=_WINDOW_AXES, name='norm_c_t')(new_cell)
                + input_gate * candidate)
    if self.layer_norm:
      i_m, f_m, g_m, m_m = jnp.split(
          self.param('memory_bias', nn.initializers.zeros_init(),
                     cell.shape[1:-1] + (4 * c,)), 4, axis=-1)
    else:
      i_m = f_m = g_m = m_m = 0.0
    memory_gates = dict(i_M=nn.sigmoid(i_xm + i_m),
                        f_M=nn.sigmoid(f_xm + f_m + FORGET_BIAS),
                        g_M=jnp.tanh(g_xm + g_m))
    memory = (memory_gates['f_M'] * jnp.tanh(m_m)
              + memory_gates['i_M'] * memory_gates['g_M'])
    output_gate = nn.sigmoid(jnp.tanh(
        o_x + o_h + conv(c, name='conv_new_cell')(flatten_window(new_cell))
        + conv(c, name='conv_new_gm')(flatten_window(memory))))
    unit.record(self, i=input_gate, r=recall_gate, g=candidate,
                **memory_gates, o=output_gate)
    both = jnp.concatenate([new_cell, memory], axis=-1)
    new_hidden = jnp.tanh(self.conv(c, (1, 1), use_bias=False,
                                    name='conv_last')(both)) * output_gate
    return new_hidden, new_cell


class E3DLSTMLayer(unit.BiasFreeConvModule):
  """One E3D-LSTM layer at one time step.

  State: (h, c) (B, D, h, w, C), the history buffer (B, T-1, D*h*w, C) and,
  in the bottom layer, its previous input (B, h, w, in_features). Inputs:
  the bottom layer's are frames (B, h, w, in_features) that it windows
  itself, the others' the layer below's output (B, h, w, D*C).
  """
  bottom: bool = False

  flow_crosses_time = False
  state_needs_num_steps = True

  def initial_state(self, batch, height, width, in_features, dtype,
                    num_steps):
    hidden = jnp.zeros((batch, WINDOW, height, width, self.num_hidden), dtype)
    history = jnp.zeros(
        (batch, num_steps, WINDOW * height * width, self.num_hidden), dtype)
    state = (hidden, hidden, history)
    if self.bottom:
      state += (unit.zeros(batch, height, width, in_features, dtype),)
    return state

  def initial_flow(self, batch, height, width, dtype):
    return ()

  @nn.compact
  def __call__(self, inputs, flow, state, step, layer):
    del layer
    hidden, cell, history = state[:3]
    window = (jnp.concatenate([state[3], inputs], axis=-1) if self.bottom
              else inputs)
    history = jax.lax.dynamic_update_index_in_dim(history, _rows(cell), step,
                                                  axis=1)
    valid = jnp.arange(history.shape[1]) <= step
    hidden, cell = Eidetic3DLSTMCell(
        self.num_hidden, self.filter_size, self.layer_norm, self.conv,
        self.norm, name='cell')(window, hidden, cell, history, valid)
    state = (hidden, cell, history) + ((inputs,) if self.bottom else ())
    return flatten_window(hidden), flow, state


def layer_groups(model, conv, norm):
  """E3D-LSTM's layers for `config.model`: the bottom one windows its inputs."""
  layer = functools.partial(E3DLSTMLayer, model.num_hidden, model.filter_size,
                            model.layer_norm, conv, norm)
  return unit.split_bottom(layer, model,
                           bottom=functools.partial(layer, bottom=True))


_TORCH_NAMES = {'conv': '0.conv3d', 'norm': '1', 'norm_c_t': '_norm_c_t',
                'conv_last': 'conv_last.conv3d', 'memory_bias': 'conv_gm.1.bias',
                'kernel': 'weight', 'scale': 'weight'}


def torch_key(path, layer):
  """OpenSTL's state_dict key of the parameter at `path` inside layer `layer`.

  tf_Conv3d holds its nn.Conv3d as `.conv3d`; the cell's LayerNorm of c is
  `_norm_c_t`; our 'memory_bias' is conv_gm's LayerNorm bias.
  """
  names = [_TORCH_NAMES.get(name, name) for name in path[1:]]
  return f'cell_list.{layer}.' + '.'.join(names)
