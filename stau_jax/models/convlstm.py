"""ConvLSTM (Shi et al. 2015), as OpenSTL's ConvLSTMCell computes it.

One layer at one time step (see unit.py): state (h, c), each (B, h, w, C);
no flow between layers besides the input; passes h up. Bias-free
convolutions with optional LayerNorm (`config.model.layer_norm`):

  i, f, g, o = split(conv_x(x) + conv_h(h))    (4C channels each conv)
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
  h' = sigmoid(o) * tanh(c')

OpenSTL's cell also defines conv_o and conv_last, which its forward pass
never uses; they are not parameters here and are skipped on conversion.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from stau_jax.models import unit

# OpenSTL parameters that its ConvLSTM never uses.
UNUSED_TORCH_KEYS = r'cell_list\.\d+\.(conv_o|conv_last)\.'


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
    cell = nn.sigmoid(f) * cell + nn.sigmoid(i) * jnp.tanh(g)
    hidden = nn.sigmoid(o) * jnp.tanh(cell)
    return hidden, flow, (hidden, cell)


def layer_groups(model, conv, norm):
  """ConvLSTM's layers for `config.model`."""
  layer = functools.partial(ConvLSTMLayer, model.num_hidden, model.filter_size,
                            model.layer_norm, conv, norm)
  return unit.split_bottom(layer, model)
