"""PredRNN's spatiotemporal LSTM (ST-LSTM, Wang et al. 2017), as OpenSTL's
SpatioTemporalLSTMCell computes it.

One layer at one time step (see unit.py): state (h, c), each (B, h, w, C);
the flow is the spatiotemporal memory M, which goes up through the layers
and from the top layer at step t to the bottom layer at step t+1 (the
zigzag); passes h up. Bias-free convolutions with optional LayerNorm
(`config.model.layer_norm`), forget bias 1:

  i, f, g, i', f', g', o_x = split(conv_x(x));  i_h, f_h, g_h, o_h = split(conv_h(h))
  i_m, f_m, g_m = split(conv_m(M))
  c' = sigmoid(f + f_h + 1) * c + sigmoid(i + i_h) * tanh(g + g_h)
  M' = sigmoid(f' + f_m + 1) * M + sigmoid(i' + i_m) * tanh(g' + g_m)
  o = sigmoid(o_x + o_h + conv_o([c', M']))
  h' = o * tanh(conv_last([c', M']))      (conv_last: 1x1, no LayerNorm)

The cell records (RECORDS) its gates after their nonlinearities: i, f, g of
c, i_M, f_M, g_M of M, and o.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from stau_jax.models import unit

FORGET_BIAS = 1.0

# What an ST-LSTM records (PredRNN, PredRNN-v2, MotionRNN; MIM's bottom layer).
RECORDS = (
    unit.Record('i', "input gate sigmoid(i + i_h) of c"),
    unit.Record('f', "forget gate sigmoid(f + f_h + 1) of c"),
    unit.Record('g', "candidate tanh(g + g_h) of c", value_range=(-1.0, 1.0)),
    unit.Record('i_M', "input gate sigmoid(i' + i_m) of the memory M"),
    unit.Record('f_M', "forget gate sigmoid(f' + f_m + 1) of M"),
    unit.Record('g_M', "candidate tanh(g' + g_m) of M",
                value_range=(-1.0, 1.0)),
    unit.Record('o', "output gate o"),
)


class SpatioTemporalLSTMCell(unit.BiasFreeConvModule):
  """ST-LSTM update: (x, h, c, M) -> (h', c', M', (delta_c, delta_m)), the
  input terms sigmoid(i) * tanh(g) of c' and M' that PredRNN-v2's
  decoupling loss compares.

  With `highway` (MotionRNN's motion highway, (B, h, w, C)) the output gate
  also lets it through: h' = o * tanh(conv_last([c', M'])) + (1 - o) * highway.
  """

  @nn.compact
  def __call__(self, inputs, hidden, cell, memory, highway=None):
    conv = unit.bias_free_conv_norm(self)
    c = self.num_hidden
    i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = jnp.split(
        conv(7 * c, name='conv_x')(inputs), 7, axis=-1)
    i_h, f_h, g_h, o_h = jnp.split(conv(4 * c, name='conv_h')(hidden), 4,
                                   axis=-1)
    i_m, f_m, g_m = jnp.split(conv(3 * c, name='conv_m')(memory), 3, axis=-1)
    gates = dict(i=nn.sigmoid(i_x + i_h),
                 f=nn.sigmoid(f_x + f_h + FORGET_BIAS),
                 g=jnp.tanh(g_x + g_h),
                 i_M=nn.sigmoid(i_xm + i_m),
                 f_M=nn.sigmoid(f_xm + f_m + FORGET_BIAS),
                 g_M=jnp.tanh(g_xm + g_m))
    delta_cell = gates['i'] * gates['g']
    new_cell = gates['f'] * cell + delta_cell
    delta_memory = gates['i_M'] * gates['g_M']
    new_memory = gates['f_M'] * memory + delta_memory
    both = jnp.concatenate([new_cell, new_memory], axis=-1)
    output_gate = nn.sigmoid(o_x + o_h + conv(c, name='conv_o')(both))
    unit.record(self, **gates, o=output_gate)
    new_hidden = output_gate * jnp.tanh(
        self.conv(c, (1, 1), use_bias=False, name='conv_last')(both))
    if highway is not None:
      new_hidden = new_hidden + (1 - output_gate) * highway
    return new_hidden, new_cell, new_memory, (delta_cell, delta_memory)


class PredRNNLayer(unit.BiasFreeConvModule):
  """One PredRNN layer at one time step: an ST-LSTM on the zigzag memory.

  Sows the cell's (delta_c, delta_m) as 'memory_deltas' into
  unit.AUXILIARY for PredRNN-v2's decoupling loss (a no-op unless the
  collection is mutable).
  """

  flow_crosses_time = True

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    state = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return state, state

  def initial_flow(self, batch, height, width, dtype):
    return unit.zeros(batch, height, width, self.num_hidden, dtype)

  @nn.compact
  def __call__(self, inputs, memory, state, step, layer):
    del step, layer
    hidden, cell = state
    hidden, cell, memory, deltas = SpatioTemporalLSTMCell(
        self.num_hidden, self.filter_size, self.layer_norm, self.conv,
        self.norm, name='cell')(inputs, hidden, cell, memory)
    self.sow(unit.AUXILIARY, 'memory_deltas', deltas)
    return hidden, memory, (hidden, cell)


def layer_groups(model, conv, norm):
  """PredRNN's layers for `config.model`."""
  layer = functools.partial(PredRNNLayer, model.num_hidden, model.filter_size,
                            model.layer_norm, conv, norm)
  return unit.split_bottom(layer, model)
