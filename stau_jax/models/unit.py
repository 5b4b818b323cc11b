"""What a predictive unit is: the contract between a unit and the predictor.

The predictor (predictor.py) owns the time scan, the frame front-end and the
loop over layers; a unit only says what one layer does at one time step.
A unit is a module `layer_groups(model_config, frontend, conv, norm)` that
returns the unit's layers as a tuple of `LayerGroup`s, bottom first. Most
units are one group of `num_layers` identical layers; a unit whose bottom
layer differs (its input has other channels, or it is another cell, as in
MIM or PredRNN++'s gradient highway) returns a group of 1 and a group of the
rest. Each group is one `nn.scan` over its layers, with parameters stacked
on a leading layer axis under the group's name.

A layer module (one layer at one time step) provides:

  initial_state(batch, height, width, in_features, dtype) -> state
      The layer's own carry through time (zeros), e.g. STAU's T and its
      ring buffers, an LSTM's (h, c).
  initial_flow(batch, height, width, dtype) -> flow
      What runs through the layers inside a step, bottom to top, besides the
      input: e.g. ST-LSTM's spatiotemporal memory M, STAU's stacks of the
      lower layers' states. Called on the bottom group's layer.
  flow_crosses_time: bool (class attribute)
      True: the flow leaving the top layer at step t enters the bottom layer
      at step t+1 (ST-LSTM's zigzag memory). False: it restarts from
      `initial_flow` every step (STAU).
  __call__(inputs, flow, state, step, layer) -> (outputs, flow, state)
      inputs (B, h, w, in_features) from the layer below (or the front-end),
      `step` the time step t and `layer` the layer index k (traced ints).
      `outputs` go to the layer above (or the decoder) and are the layer's
      hidden state as `Predictor(return_hidden=True)` reports it.

Layers build their convolutions with the `conv` factory (an `nn.Conv` with
the configured dtype and lowering, see predictor.conv_factory) and their
LayerNorms with `norm`, and never see config strings for those.
"""
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp


class LayerGroup(NamedTuple):
  """`count` consecutive layers built by `layer(name=name)`, scanned together."""
  layer: Callable[..., Any]
  count: int
  name: str


def zeros(batch, height, width, channels, dtype):
  """A zero state (B, h, w, channels)."""
  return jnp.zeros((batch, height, width, channels), dtype)


def split_bottom(layer, num_layers, frontend, bottom=None):
  """Layer groups for a unit whose bottom layer may differ from the others.

  With the 'patch' front-end the bottom layer reads patched frames, whose
  channels differ from num_hidden, so its parameters cannot be stacked with
  the others: it becomes its own group 'cell_0' and the rest 'cells'.
  `bottom` (a layer factory) replaces the bottom layer in any case.
  """
  if bottom is None and frontend != 'patch':
    return (LayerGroup(layer, num_layers, 'cells'),)
  groups = (LayerGroup(bottom or layer, 1, 'cell_0'),)
  if num_layers > 1:
    groups += (LayerGroup(layer, num_layers - 1, 'cells'),)
  return groups
