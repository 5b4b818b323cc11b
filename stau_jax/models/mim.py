"""Memory In Memory (MIM, Wang et al. 2019), as OpenSTL's MIM_Model computes it.

Layer 0 is PredRNN's ST-LSTM (predrnn.SpatioTemporalLSTMCell); each layer
k >= 1 is a MIM block fed by a MIMN. All states are (B, h, w, C); the flow
through the layers is (M, D): M the spatiotemporal memory, which zigzags as
in PredRNN (up the layers, then from the top layer at step t to the bottom
at t+1), and D the non-stationarity signal the layer above reads:

  layer 0:  h0', c0', M' = ST-LSTM(x, h0, c0, M);   D = h0' - h0
  layer k:  (MIMN, then the block; its own state h, c, n, d, e)
    d', e' = MIMS_diff(D, d, e)    MIMN: the difference of the lower layer's
                                   hidden states, run through its own LSTM
    D = d'                         what layer k+1's MIMN reads
    i, g, o_x, ... from conv_x_cc(x), conv_t_cc(h), conv_s_cc(M)
    M' = sigmoid(f_x + f_s + 1) * M + sigmoid(i_x + i_s) * tanh(g_x + g_s)
    c', n' = MIMS(d', c, n)        the stationary memory: the block's own cell
                                   c is the "hidden" input of a second MIMS
                                   whose cell n is kept by the block
    c' = c' + sigmoid(i_x + i_t) * tanh(g_x + g_t)
    h' = sigmoid(o_x + o_t + o_s) * tanh(conv_last([c', M']))   (1x1)

with x the layer below's new h. MIMS (OpenSTL's MIMN.forward and
MIMBlock.MIMS, the same computation) is an LSTM with elementwise peepholes
of shape (h, w, .) on its cell n:

  i, g, f, o = split(conv_x_concat(x) + conv_h_concat(h))   (this order)
  n' = sigmoid(f + w_f * n + 1) * n + sigmoid(i + w_i * n) * tanh(g)
  h' = sigmoid(o + w_o * n') * tanh(n')

(w_i, w_f = ct_weight, w_o = oc_weight, zero-initialised as in OpenSTL.)
Convolutions are bias-free with optional LayerNorm (`config.model.layer_norm`).

Quirks of the reference, and what we do:
- At t = 0 OpenSTL runs no MIMN (it calls it and drops the result): every
  block reads D = 0 and the MIMN states stay zero until t = 1. We compute
  the MIMN and keep its zero state at step 0.
- OpenSTL keeps the MIMS cell n as a module attribute (`convlstm_c`) that
  survives across forward calls, detached: a fresh model starts every
  sequence from n = 0 only on its first batch, and later batches inherit the
  previous batch's n. We start every sequence from n = 0 (as the original
  MIM code does and as OpenSTL's first batch does) and keep the gradient
  through n; the forward pass equals OpenSTL's on a fresh model.
- OpenSTL's MIMN modules define a `conv_last` they never use: skipped on
  conversion.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from stau_jax.models import predrnn
from stau_jax.models import unit

FORGET_BIAS = 1.0
# OpenSTL parameters that its MIM never uses.
UNUSED_TORCH_KEYS = r'stlstm_layer_diff\.\d+\.conv_last\.'

# Layer 0 records its ST-LSTM's gates (predrnn.RECORDS), the MIM blocks the
# gates of their own update (their MIMS and MIMN record nothing).
RECORDS = (
    unit.Record('i', "input gate of c: sigmoid(i + i_h) (layer 0), "
                "sigmoid(i_x + i_t) (MIM blocks)"),
    unit.Record('f', "forget gate sigmoid(f + f_h + 1) of c (layer 0 only; "
                "a MIM block's MIMS replaces it)"),
    unit.Record('g', "candidate of c: tanh(g + g_h) (layer 0), "
                "tanh(g_x + g_t) (MIM blocks)", value_range=(-1.0, 1.0)),
    unit.Record('i_M', "input gate of the memory M: sigmoid(i' + i_m), "
                "sigmoid(i_x + i_s)"),
    unit.Record('f_M', "forget gate of M: sigmoid(f' + f_m + 1), "
                "sigmoid(f_x + f_s + 1)"),
    unit.Record('g_M', "candidate of M: tanh(g' + g_m), tanh(g_x + g_s)",
                value_range=(-1.0, 1.0)),
    unit.Record('o', "output gate: o (layer 0), sigmoid(o_x + o_t + o_s) "
                "(MIM blocks)"),
)


class MIMS(unit.BiasFreeConvModule):
  """The MIMS/MIMN LSTM: (x, h, n) -> (h', n'), each (B, h, w, C)."""

  @nn.compact
  def __call__(self, inputs, hidden, cell):
    c = self.num_hidden
    conv = unit.bias_free_conv_norm(self)

    def peephole(name, channels):
      """Elementwise weights (h, w, channels), zero at init as OpenSTL's."""
      return self.param(name, nn.initializers.zeros,
                        cell.shape[1:3] + (channels,)).astype(cell.dtype)

    i, g, f, o = jnp.split(conv(4 * c, name='conv_h_concat')(hidden)
                           + conv(4 * c, name='conv_x_concat')(inputs), 4,
                           axis=-1)
    w_i, w_f = jnp.split(peephole('ct_weight', 2 * c), 2, axis=-1)
    new_cell = (nn.sigmoid(f + w_f * cell + FORGET_BIAS) * cell
                + nn.sigmoid(i + w_i * cell) * jnp.tanh(g))
    new_hidden = (nn.sigmoid(o + peephole('oc_weight', c) * new_cell)
                  * jnp.tanh(new_cell))
    return new_hidden, new_cell


class STLSTMLayer(unit.BiasFreeConvModule):
  """MIM's bottom layer: an ST-LSTM that also sends up h' - h."""

  flow_crosses_time = True

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    state = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return state, state

  def initial_flow(self, batch, height, width, dtype):
    state = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return state, state

  @nn.compact
  def __call__(self, inputs, flow, state, step, layer):
    del step, layer
    memory, _ = flow
    hidden, cell = state
    new_hidden, cell, memory, _ = predrnn.SpatioTemporalLSTMCell(
        self.num_hidden, self.filter_size, self.layer_norm, self.conv,
        self.norm, name='cell')(inputs, hidden, cell, memory)
    return new_hidden, (memory, new_hidden - hidden), (new_hidden, cell)


class MIMLayer(unit.BiasFreeConvModule):
  """A MIM layer k >= 1: OpenSTL's MIMN k-1 ('mimn') and MIMBlock k.

  State (h, c, n, d, e): the block's hidden and cell, its MIMS cell, and
  the MIMN's hidden and cell.
  """

  flow_crosses_time = True

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    return (unit.zeros(batch, height, width, self.num_hidden, dtype),) * 5

  @nn.compact
  def __call__(self, inputs, flow, state, step, layer):
    del layer
    memory, difference = flow
    hidden, cell, mims_cell, diff_hidden, diff_cell = state
    c = self.num_hidden
    mims = functools.partial(MIMS, c, self.filter_size, self.layer_norm,
                             self.conv, self.norm)
    new_diff_hidden, new_diff_cell = mims(name='mimn')(difference, diff_hidden,
                                                       diff_cell)
    started = step > 0
    diff_hidden = jnp.where(started, new_diff_hidden, diff_hidden)
    diff_cell = jnp.where(started, new_diff_cell, diff_cell)

    conv = unit.bias_free_conv_norm(self)
    i_x, g_x, f_x, o_x = jnp.split(conv(4 * c, name='conv_x_cc')(inputs), 4,
                                   axis=-1)
    i_t, g_t, o_t = jnp.split(conv(3 * c, name='conv_t_cc')(hidden), 3,
                              axis=-1)
    i_s, g_s, f_s, o_s = jnp.split(conv(4 * c, name='conv_s_cc')(memory), 4,
                                   axis=-1)
    gates = dict(i=nn.sigmoid(i_x + i_t), g=jnp.tanh(g_x + g_t),
                 i_M=nn.sigmoid(i_x + i_s),
                 f_M=nn.sigmoid(f_x + f_s + FORGET_BIAS),
                 g_M=jnp.tanh(g_x + g_s), o=nn.sigmoid(o_x + o_t + o_s))
    unit.record(self, **gates)
    memory = gates['f_M'] * memory + gates['i_M'] * gates['g_M']
    cell, mims_cell = mims(name='mims')(diff_hidden, cell, mims_cell)
    cell = cell + gates['i'] * gates['g']
    both = jnp.concatenate([cell, memory], axis=-1)
    hidden = gates['o'] * jnp.tanh(
        self.conv(c, (1, 1), use_bias=False, name='conv_last')(both))
    return (hidden, (memory, diff_hidden),
            (hidden, cell, mims_cell, diff_hidden, diff_cell))


def torch_key(path, layer):
  """OpenSTL's key: layer k's block (or ST-LSTM) under `stlstm_layer.{k}.`
  with its MIMS's parameters directly on it, its MIMN under
  `stlstm_layer_diff.{k-1}.`; otherwise as unit.torch_key."""
  if path[0] == 'mimn':
    prefix, path, layer = 'stlstm_layer_diff', path[1:], layer - 1
  else:
    prefix, path = 'stlstm_layer', tuple(n for n in path if n != 'mims')
  return prefix + unit.torch_key(path, layer).removeprefix('cell_list')


def layer_groups(model, conv, norm):
  """MIM's layers for `config.model`: an ST-LSTM, then MIM layers."""
  args = (model.num_hidden, model.filter_size, model.layer_norm,
          conv, norm)
  return unit.split_bottom(functools.partial(MIMLayer, *args), model,
                           bottom=functools.partial(STLSTMLayer, *args))
