"""What a predictive unit is: the contract between a unit and the predictor.

The predictor (predictor.py) owns the time scan, the frame front-end and the
loop over layers; a unit only says what one layer does at one time step.
A unit is a module whose `layer_groups(model_config, conv, norm)`
returns the unit's layers as a tuple of `LayerGroup`s, bottom first, plus a
`Unit` entry in registry.py. `layer_groups` also checks the fields only the
unit reads (STAU's tau, theta, residual), raising ValueError; the predictor
checks the shared ones (predictor.validate_model_config). Most
units are one group of `num_layers` identical layers; a unit whose bottom
layer differs (its input has other channels, or it is another cell, as in
MIM or PredRNN++'s gradient highway) returns a group of 1 and a group of the
rest. Each group is one `nn.scan` over its layers, with parameters stacked
on a leading layer axis under the group's name.

A layer module (one layer at one time step) provides:

  initial_state(batch, height, width, in_features, dtype) -> state
      The layer's own carry through time (zeros), e.g. STAU's T and its
      ring buffers, an LSTM's (h, c).
  state_needs_num_steps: bool (optional class attribute, default False)
      True: `initial_state` also gets `num_steps=`T-1, the number of time
      steps, for a state that keeps every past step in a fixed-size buffer
      (E3D-LSTM's eidetic memory of all past cell states).
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
LayerNorms with `norm`, and never see config strings for those. Several
same-shape ConvNorms on different inputs go through `conv_norms`, which
runs them as one grouped convolution where the factory says that is fast.

A unit with an auxiliary training loss (PredRNN-v2's memory decoupling)
gives its `Unit` an `auxiliary_loss`. Its layers `sow` what the loss needs
into the AUXILIARY collection; the scans stack it over layers and steps,
and the predictor applies the loss module, whose parameters are shared by
all layers (e.g. one adapter conv), to the stack. Layers sow only while
AUXILIARY is mutable (training and init), so inference pays nothing.

What a unit records for pictures and analysis (attention weights, gates)
it declares in its `Unit`'s `records` (`Record`s) and its layers record
with `record(self, name=value)`, each value (B, ...) for one layer at one
step: batch first, names unique within a layer. They are recorded only on
request (`predictor.predict_with_records`, which makes RECORDS mutable):
training and plain `apply` record nothing. The predictor returns them by
name, stacked over steps and all layers; a layer that does not record a
name the unit declares (e.g. MIM's bottom layer, another cell) gets NaN
there.
"""
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

# The collection layers sow their auxiliary loss terms into (see above).
AUXILIARY = 'auxiliary'
# The collection layers record into (see above).
RECORDS = 'records'
# What a record is, per sample, at one layer and step (Record.kind).
RECORD_KINDS = ('step_attention', 'layer_attention', 'map')


class Record(NamedTuple):
  """One thing a unit records per sample, layer and time step.

  name: its key in `predictor.predict_with_records`' result.
  meaning: what it is, in words (and which layers record it, if not all).
  kind: 'step_attention': (tau,) softmax weights over the last tau time
    steps, oldest first (entry i weighs step t - tau + i; steps < 0 are
    the zero initial states). 'layer_attention': (theta,) weights over the
    last theta layers, lowest first (entry i weighs layer k - theta + 1 + i,
    0 where that layer would be < 0). 'map': (..., h, w, C) on the hidden
    grid, e.g. a gate.
  value_range: (low, high) that its values lie in.
  """
  name: str
  meaning: str
  kind: str = 'map'
  value_range: tuple[float, float] = (0.0, 1.0)


def record(module, **values):
  """Records each value (B, ...) under its name into RECORDS, when it is
  mutable (predictor.predict_with_records); otherwise does nothing."""
  for name, value in values.items():
    module.sow(RECORDS, name, value)


class Unit(NamedTuple):
  """A registry entry (registry.UNITS).

  layer_groups: (config.model, conv, norm) -> tuple of LayerGroup; raises
    ValueError for a bad field of the unit's own.
  torch_key: (path inside one layer, layer index) -> the PyTorch state_dict
    key of that parameter in the unit's reference code (convert_torch).
  unused_torch_keys: a regular expression matching the reference's
    parameters that its forward pass never uses (skipped on conversion).
  auxiliary_loss: None, or (config.model, conv) -> a factory of the module
    computing the unit's weighted auxiliary training loss (a float32 scalar)
    from the terms its layers sow into AUXILIARY: {sow name: tuple of the
    sown values}, each leaf stacked to (T-1, L, ...) over steps and all
    layers, bottom first. Its parameters are named as the reference
    model's top-level attributes (convert_torch).
  records: the `Record`s its layers record, in the order pictures show them.
  """
  layer_groups: Callable[..., tuple['LayerGroup', ...]]
  torch_key: Callable[[tuple[str, ...], int], str]
  unused_torch_keys: str = r'$^'
  auxiliary_loss: Callable[..., Callable[..., nn.Module]] | None = None
  records: tuple[Record, ...] = ()


class LayerGroup(NamedTuple):
  """`count` consecutive layers built by `layer(name=name)`, scanned together."""
  layer: Callable[..., Any]
  count: int
  name: str


class ConvNorm(nn.Module):
  """Square 'same' conv, then (if `layer_norm`) LayerNorm over (h, w, C) jointly.

  `conv` and `norm` are the predictor's factories (predictor.conv_factory,
  predictor.norm_factory): the LayerNorm has elementwise scale and bias of
  shape (h, w, C), as PyTorch's nn.LayerNorm([C, h, w]) (eps 1e-5). STAU's
  convolutions have a bias and always a LayerNorm; the PredRNN family's
  (OpenSTL) have no bias and an optional LayerNorm (`config.model.layer_norm`).
  Parameters: 'conv' (and 'norm'), as PyTorch's nn.Sequential(conv, norm)
  holds them at indices 0 (and 1).
  """
  features: int
  filter_size: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  use_bias: bool = True
  layer_norm: bool = True

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (self.filter_size, self.filter_size),
                  padding='SAME', use_bias=self.use_bias, name='conv')(x)
    return self.norm(name='norm')(x) if self.layer_norm else x


class ConvParams(nn.Module):
  """nn.Conv's parameters without its convolution: 'kernel' (k, k, I, F)
  and, if `use_bias`, 'bias' (F,), created as nn.Conv creates them."""
  features: int
  filter_size: int
  in_features: int
  use_bias: bool

  @nn.compact
  def __call__(self):
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(),
        (self.filter_size, self.filter_size, self.in_features, self.features),
        jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros_init(), (self.features,),
                       jnp.float32) if self.use_bias
            else jnp.zeros((self.features,), jnp.float32))
    return kernel, bias


class _ConvNormParts(nn.Module):
  """A ConvNorm's two parts, used apart: `conv` gives the convolution's
  parameters, `norm` applies the LayerNorm. Same parameters as ConvNorm."""
  features: int
  filter_size: int
  in_features: int
  use_bias: bool
  norm_factory: Callable[..., nn.Module]

  def setup(self):
    self.conv = ConvParams(self.features, self.filter_size, self.in_features,
                            self.use_bias)
    self.norm = self.norm_factory()


def conv_norms(features, filter_size, conv, norm, named_inputs,
               use_bias=True):
  """ConvNorms of the same shape on several inputs: `name(x)` for each
  (name, x) in `named_inputs`, in order, each x (B, h, w, I).

  Called inside a module's compact method, it creates the ConvNorms as that
  module's submodules `name`, with ConvNorm's parameters. Where the conv
  factory runs grouped convolutions fast (`conv.fast_groups`: oneDNN's) the
  convolutions are one grouped convolution over the inputs side by side:
  one call instead of several running at once, the same results.

  Returns:
    a tuple of (B, h, w, features), one per input.
  """
  if not getattr(conv, 'fast_groups', False) or len(named_inputs) == 1:
    return tuple(ConvNorm(features, filter_size, conv, norm, use_bias,
                          name=name)(x) for name, x in named_inputs)
  parts = [_ConvNormParts(features, filter_size, x.shape[-1], use_bias, norm,
                          name=name) for name, x in named_inputs]
  kernels, biases = zip(*(part.conv() for part in parts))
  groups = len(parts)
  grouped = conv(groups * features, (filter_size, filter_size),
                 padding='SAME', feature_group_count=groups, parent=None)
  outputs = grouped.apply(
      {'params': {'kernel': jnp.concatenate(kernels, axis=-1),
                  'bias': jnp.concatenate(biases)}},
      jnp.concatenate([x for _, x in named_inputs], axis=-1))
  return tuple(part.norm(y) for part, y in
               zip(parts, jnp.split(outputs, groups, axis=-1)))


class BiasFreeConvModule(nn.Module):
  """The fields every module of the PredRNN-family units starts with.

  num_hidden channels; square filter_size convolutions without bias, each
  followed by a LayerNorm when layer_norm (OpenSTL's layer_norm); conv and
  norm are the predictor's factories (see ConvNorm). Subclasses add their
  own fields after these and build their ConvNorms with
  `bias_free_conv_norm(self)`.
  """
  num_hidden: int
  filter_size: int
  layer_norm: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]


def bias_free_conv_norm(module, conv=None):
  """The PredRNN family's ConvNorm factory for `module` (a
  BiasFreeConvModule): bias-free, with the module's filter_size, norm
  factory and layer_norm, and its `conv` factory unless another is given."""
  return functools.partial(ConvNorm, filter_size=module.filter_size,
                           conv=conv or module.conv, norm=module.norm,
                           use_bias=False, layer_norm=module.layer_norm)


def zeros(batch, height, width, channels, dtype):
  """A zero state (B, h, w, channels)."""
  return jnp.zeros((batch, height, width, channels), dtype)


def split_bottom(layer, model, bottom=None):
  """Layer groups for a unit whose bottom layer may differ from the others.

  With the 'patch' front-end the bottom layer reads patched frames, whose
  channels differ from num_hidden, so its parameters cannot be stacked with
  the others: it becomes its own group 'cell_0' and the rest 'cells'.
  `bottom` (a layer factory) replaces the bottom layer in any case.
  """
  num_layers = model.num_layers
  if bottom is None and model.frontend != 'patch':
    return (LayerGroup(layer, num_layers, 'cells'),)
  groups = (LayerGroup(bottom or layer, 1, 'cell_0'),)
  if num_layers > 1:
    groups += (LayerGroup(layer, num_layers - 1, 'cells'),)
  return groups


_TORCH_NAMES = {'conv': '0', 'norm': '1', 'kernel': 'weight', 'scale': 'weight'}


def torch_key(path, layer):
  """PyTorch state_dict key of the parameter at `path` inside layer `layer`.

  The layout of the authors' STAU and of OpenSTL: layer k's modules under
  `cell_list.{k}.`, a `ConvNorm`'s conv and LayerNorm at Sequential indices
  0 and 1, 'kernel'/'scale' named 'weight'. A STAU layer's cell ('cell') is
  the torch cell itself. Units with other layouts give their own function.
  """
  if path[0] == 'cell':
    path = path[1:]
  names = [_TORCH_NAMES.get(name, name) for name in path]
  return f'cell_list.{layer}.' + '.'.join(names)
