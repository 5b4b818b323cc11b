"""ConvLSTM (Shi et al. 2015), as OpenSTL's ConvLSTMCell computes it.

One layer at one time step (see unit.py): state (h, c), each (B, h, w, C);
no flow between layers besides the input; passes h up. Bias-free
convolutions with optional LayerNorm (`config.model.layer_norm`):

  i, f, g, o = split(conv_x(x) + conv_h(h))    (4C channels each conv)
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
  h' = sigmoid(o) * tanh(c')

OpenSTL's cell also defines conv_o and conv_last, which its forward pass
never uses; they are not parameters here and are skipped on conversion.
Records (RECORDS) the gates i, f, o and the candidate g after their
nonlinearities.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from stau_jax.models import unit

# OpenSTL parameters that its ConvLSTM never uses.
UNUSED_TORCH_KEYS = r'cell_list\.\d+\.(conv_o|conv_last)\.'

RECORDS = (
    unit.Record('i', "input gate sigmoid(i): how much of g enters c"),
    unit.Record('f', "forget gate sigmoid(f): how much of c is kept"),
    unit.Record('g', 'candidate tanh(g) added to c', value_range=(-1.0, 1.0)),
    unit.Record('o', "output gate sigmoid(o): how much of tanh(c') is h'"),
)


class ConvLSTMLayer(unit.BiasFreeConvModule):
  """One ConvLSTM layer at one time step."""

  flow_crosses_time = False

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features
    state = unit.zeros(batch, height, width, self.num_hidden, dtype)
    return state, state

  def initial_flow(self, batch, height, width, dtype):
    return ()

  @nn.compact
  def __call__(self, inputs, flow, state, step, layer):
    del step, layer
    hidden, cell = state
    conv = unit.bias_free_conv_norm(self)
    gates = (conv(4 * self.num_hidden, name='conv_x')(inputs)
             + conv(4 * self.num_hidden, name='conv_h')(hidden))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    i, f, g, o = nn.sigmoid(i), nn.sigmoid(f), jnp.tanh(g), nn.sigmoid(o)
    unit.record(self, i=i, f=f, g=g, o=o)
    cell = f * cell + i * g
    hidden = o * jnp.tanh(cell)
    return hidden, flow, (hidden, cell)


def layer_groups(model, conv, norm):
  """ConvLSTM's layers for `config.model`."""
  layer = functools.partial(ConvLSTMLayer, model.num_hidden, model.filter_size,
                            model.layer_norm, conv, norm)
  return unit.split_bottom(layer, model)
