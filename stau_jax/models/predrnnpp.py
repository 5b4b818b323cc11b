"""PredRNN++ (Wang et al. 2018): Causal LSTMs with a Gradient Highway Unit,
as OpenSTL's PredRNNpp_Model computes it.

One layer at one time step (see unit.py): a Causal LSTM with state (h, c),
each (B, h, w, C); the flow is the spatiotemporal memory M, which goes up
through the layers and from the top layer at step t to the bottom layer at
step t+1 (the zigzag, as in PredRNN). Bias-free convolutions with optional
LayerNorm (`config.model.layer_norm`), forget bias 1:

  i, f, g, i', f', g', o_x = split(conv_x(x));  i_h, f_h, g_h, o_h = split(conv_h(h))
  i_c, f_c, g_c = split(conv_c(c));             i_m, f_m, m_m = split(conv_m(M))
  c' = sigmoid(f + f_h + f_c + 1) * c + sigmoid(i + i_h + i_c) * tanh(g + g_h + g_c)
  i_cm, g_cm, f_cm, o_c = split(conv_c2m(c'))          (note the order i, g, f, o)
  M' = sigmoid(f' + f_m + f_cm + 1) * tanh(m_m) + sigmoid(i' + i_m + i_cm) * tanh(g' + g_cm)
  o = tanh(o_x + o_h + o_c + conv_om(M'))              (tanh, as in the paper)
  h' = o * tanh(conv_last([c', M']))                   (conv_last: 1x1, no LayerNorm)

The bottom layer (layer 0) is a Causal LSTM followed by the Gradient Highway
Unit, whose state z (B, h, w, C) is carried through time (zeros at t = 0):

  p, u = split(x_concat(h') + z_concat(z))              (2C channels each conv)
  z' = sigmoid(u) * tanh(p) + (1 - sigmoid(u)) * z

and z', not h', goes to layer 1: the bottom layer's outputs (and its hidden
state under `Predictor(return_hidden=True)`) are z'. The bottom layer's
state is (h, c, z), the others' (h, c). PredRNN++ needs num_layers >= 2.

Records (RECORDS): the Causal LSTM's gates after their nonlinearities
(i, f, g of c; i_M, f_M, g_M of M; o) and, in layer 0, the GHU's u.

Reference quirks and what we do:
  * OpenSTL's cell defines conv_o, which its forward pass never uses: not a
    parameter here, skipped on conversion.
  * OpenSTL's GHU normalizes its 2C-channel convolutions with
    LayerNorm([C, h, w]), so its model crashes with layer_norm=1. With
    `layer_norm` we normalize over the convolutions' real output, as
    LayerNorm([2C, h, w]) (PredRNN++'s authors' TensorFlow code also
    normalizes the whole 2C gates); such a GHU converts from a checkpoint
    with those 2C-channel LayerNorms.
  * The GHU's convolution kernels start uniform in [-0.001, 0.001], as in
    OpenSTL and the authors' code (a highway that starts nearly open).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from stau_jax.models import unit

FORGET_BIAS = 1.0
GHU_INIT_SCALE = 0.001
# OpenSTL parameters that its PredRNN++ never uses.
UNUSED_TORCH_KEYS = r'cell_list\.\d+\.conv_o\.'

RECORDS = (
    unit.Record('i', "input gate sigmoid(i + i_h + i_c) of c"),
    unit.Record('f', "forget gate sigmoid(f + f_h + f_c + 1) of c"),
    unit.Record('g', "candidate tanh(g + g_h + g_c) of c",
                value_range=(-1.0, 1.0)),
    unit.Record('i_M', "input gate sigmoid(i' + i_m + i_cm) of the memory M"),
    unit.Record('f_M', "forget gate sigmoid(f' + f_m + f_cm + 1) of M"),
    unit.Record('g_M', "candidate tanh(g' + g_cm) of M",
                value_range=(-1.0, 1.0)),
    unit.Record('o', 'output gate o (tanh)', value_range=(-1.0, 1.0)),
    unit.Record('u', "the Gradient Highway Unit's gate sigmoid(u): how much "
                "of tanh(p) replaces z (layer 0 only)"),
)


class CausalLSTMCell(unit.BiasFreeConvModule):
  """Causal LSTM update: (x, h, c, M) -> (h', c', M')."""

  @nn.compact
  def __call__(self, inputs, hidden, cell, memory):
    conv = unit.bias_free_conv_norm(self)
    c = self.num_hidden
    i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = jnp.split(
        conv(7 * c, name='conv_x')(inputs), 7, axis=-1)
    i_h, f_h, g_h, o_h = jnp.split(conv(4 * c, name='conv_h')(hidden), 4,
                                   axis=-1)
    i_c, f_c, g_c = jnp.split(conv(3 * c, name='conv_c')(cell), 3, axis=-1)
    i_m, f_m, m_m = jnp.split(conv(3 * c, name='conv_m')(memory), 3, axis=-1)
    cell_gates = dict(i=nn.sigmoid(i_x + i_h + i_c),
                      f=nn.sigmoid(f_x + f_h + f_c + FORGET_BIAS),
                      g=jnp.tanh(g_x + g_h + g_c))
    new_cell = cell_gates['f'] * cell + cell_gates['i'] * cell_gates['g']
    i_cm, g_cm, f_cm, o_c = jnp.split(conv(4 * c, name='conv_c2m')(new_cell),
                                      4, axis=-1)
    memory_gates = dict(i_M=nn.sigmoid(i_xm + i_m + i_cm),
                        f_M=nn.sigmoid(f_xm + f_m + f_cm + FORGET_BIAS),
                        g_M=jnp.tanh(g_xm + g_cm))
    new_memory = (memory_gates['f_M'] * jnp.tanh(m_m)
                  + memory_gates['i_M'] * memory_gates['g_M'])
    output_gate = jnp.tanh(o_x + o_h + o_c
                           + conv(c, name='conv_om')(new_memory))
    unit.record(self, **cell_gates, **memory_gates, o=output_gate)
    both = jnp.concatenate([new_cell, new_memory], axis=-1)
    new_hidden = output_gate * jnp.tanh(
        self.conv(c, (1, 1), use_bias=False, name='conv_last')(both))
    return new_hidden, new_cell, new_memory


def _ghu_kernel_init(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -GHU_INIT_SCALE,
                            GHU_INIT_SCALE)


class GradientHighwayUnit(unit.BiasFreeConvModule):
  """GHU update: (x, z) -> z', a gated mix of z and tanh(p)."""

  @nn.compact
  def __call__(self, inputs, highway):
    conv = unit.bias_free_conv_norm(self, functools.partial(self.conv,
                                              kernel_init=_ghu_kernel_init))
    gates = (conv(2 * self.num_hidden, name='x_concat')(inputs)
             + conv(2 * self.num_hidden, name='z_concat')(highway))
    p, u = jnp.split(gates, 2, axis=-1)
    update = nn.sigmoid(u)
    unit.record(self, u=update)
    return update * jnp.tanh(p) + (1 - update) * highway


class PredRNNppLayer(unit.BiasFreeConvModule):
  """One PredRNN++ layer at one time step: a Causal LSTM on the zigzag
  memory, followed (bottom layer, `gradient_highway`) by the GHU."""
  gradient_highway: bool = False

  flow_crosses_time = True

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    zeros = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return (zeros,) * (3 if self.gradient_highway else 2)

  def initial_flow(self, batch, height, width, dtype):
    return unit.zeros(batch, height, width, self.num_hidden, dtype)

  @nn.compact
  def __call__(self, inputs, memory, state, step, layer):
    del step, layer
    hidden, cell = state[:2]
    parts = (self.num_hidden, self.filter_size, self.layer_norm, self.conv,
             self.norm)
    hidden, cell, memory = CausalLSTMCell(*parts, name='cell')(
        inputs, hidden, cell, memory)
    if not self.gradient_highway:
      return hidden, memory, (hidden, cell)
    highway = GradientHighwayUnit(*parts, name='gradient_highway')(
        hidden, state[2])
    return highway, memory, (hidden, cell, highway)


def layer_groups(model, conv, norm):
  """PredRNN++'s layers for `config.model`: the bottom one with the GHU."""
  if model.num_layers < 2:
    raise ValueError(f"config.model.cell='predrnnpp' needs num_layers >= 2 "
                     f'(its gradient highway joins layers 0 and 1); got '
                     f'num_layers={model.num_layers}.')
  layer = functools.partial(PredRNNppLayer, model.num_hidden,
                            model.filter_size, model.layer_norm,
                            conv, norm)
  return unit.split_bottom(layer, model,
                           bottom=functools.partial(layer,
                                                    gradient_highway=True))


def torch_key(path, layer):
  """OpenSTL's key: the GHU's parameters are the model's
  `gradient_highway.*`, the rest as unit.torch_key."""
  key = unit.torch_key(path, layer)
  if path[0] == 'gradient_highway':
    return key.removeprefix(f'cell_list.{layer}.')
  return key
