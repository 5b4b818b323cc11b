"""The STAU unit (and MAU and STAU's ablation variants): cell and layer.

Shapes are NHWC: B batch, h x w hidden grid, C hidden channels. The equations
are those of docs/model.md ("The STAU cell"), which follow the authors'
PyTorch STAUCell/MAUCell. `STAULayer` wraps the cell with its bookkeeping:
per layer, ring buffers of the last tau temporal states and the last tau
input spatial states (written at slot t % tau), and inside one step two
theta-slot stacks of the lower layers' states (written at slot k % theta,
masked where fewer than theta layers have been visited). Softmax attention
is invariant to the order of its entries, so ring order equals the
reference's list order.
"""
import functools
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from stau_jax.models import unit

# Which states each variant's two attentions compare (docs/model.md, "Variants"):
# temporal attention (alpha, over the last tau steps) and spatial attention
# (beta, over the last theta layers) each take their weights either from the
# other domain (the STAU "correlation") or from their own domain (Fig. 5).
#   name               TAM    SAM    alpha from           beta from
#   stau               yes    yes    s_att . S'           t_spatial . T'
#   mau                yes    no     s_att . S'           (unused)
#   stau_no_tam        no     yes    (unused)             t_spatial . T'
#   stau_s_not_t       yes    yes    t_att . T'           t_spatial . T'
#   stau_t_not_s       yes    yes    s_att . S'           s_spatial . S'
#   stau_independent   yes    yes    t_att . T'           s_spatial . S'
# "s_not_t" reads "S does not supervise T" (Fig. 5a), "t_not_s" reads
# "T does not supervise S" (Fig. 5b).
# Layers the authors' STAU defines but its forward pass never uses.
UNUSED_TORCH_KEYS = r'(merge|conv_last_sr)\.'
CELLS = ('stau', 'mau', 'stau_no_tam', 'stau_s_not_t', 'stau_t_not_s',
         'stau_independent')


class CellVariant(NamedTuple):
  """What a cell variant computes (see the table above)."""
  temporal_attention: bool  # TAM: T_AMI mixes T with attended history.
  spatial_attention: bool  # SAM: S_AAI mixes S with attended lower layers.
  alpha_from_spatial: bool  # alpha from s_att . S' (else t_att . T').
  beta_from_temporal: bool  # beta from t_spatial . T' (else s_spatial . S').


VARIANTS = {
    'stau': CellVariant(True, True, True, True),
    'mau': CellVariant(True, False, True, True),
    'stau_no_tam': CellVariant(False, True, True, True),
    'stau_s_not_t': CellVariant(True, True, False, True),
    'stau_t_not_s': CellVariant(True, True, True, False),
    'stau_independent': CellVariant(True, True, False, False),
}


def _kept(valid, count):
  """Indices of the entries to compute: all `count` unless `valid` is a
  NumPy mask (known when tracing), then only the valid ones."""
  if isinstance(valid, np.ndarray):
    return [i for i in range(count) if valid[i]]
  return list(range(count))


def attention_weights(keys, query, valid=None):
  """Softmax over entries j of <keys[j], query> / sqrt(h*w*C).

  Args:
    keys: N entries (B, h, w, C): a (B, N, h, w, C) stack, read as one
      matrix-vector product per sample, or a tuple of the entries, read one
      by one (no stack is built or kept for the backward pass).
    query: (B, h, w, C).
    valid: optional (N,) bool; invalid entries get weight exactly 0. A tuple
      with a NumPy mask (known when tracing) leaves them out of the
      computation.

  Returns:
    (B, N) float32 weights, one scalar per sample and entry, summing to 1
    over N.
  """
  size = math.prod(query.shape[1:])
  if isinstance(keys, tuple):
    count, kept = len(keys), _kept(valid, len(keys))
    query = query.astype(jnp.float32)
    scores = jnp.stack([jnp.sum(keys[i].astype(jnp.float32) * query,
                                axis=(1, 2, 3)) for i in kept], axis=1)
  else:
    count = keys.shape[1]
    kept = list(range(count))
    # XLA:CPU runs the product over the flattened state without the
    # transposes an einsum over (h, w, C) costs.
    scores = lax.dot_general(
        keys.reshape(keys.shape[:2] + (size,)), query.reshape(-1, size),
        (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(size)
  if valid is not None and len(kept) == count:
    scores = jnp.where(valid, scores, -jnp.inf)
  weights = jax.nn.softmax(scores, axis=1)
  if len(kept) == count:
    return weights
  return jnp.zeros((weights.shape[0], count), weights.dtype).at[:, kept].set(
      weights)


def ring_order(step, size):
  """Ring slots from oldest to newest after `step` + 1 writes at `step % size`.

  E.g. at time step t the temporal history's slots ring_order(t - 1, tau)
  hold steps t-tau .. t-1; at layer k the lower-layer stacks' slots
  ring_order(k, theta) hold layers k-theta+1 .. k. `step` may be traced.
  """
  return (step + 1 + jnp.arange(size)) % size


def _in_order(weights, order):
  """(B, N) attention weights with entries in `order` (None: as is)."""
  return weights if order is None else weights[:, order]


def attend(weights, values, valid=None):
  """Weighted sum over entries: (B, N) weights and N entries (B, h, w, C) ->
  (B, h, w, C). A stack (B, N, h, w, C) as one matrix product per sample, a
  tuple entry by entry, summed in float32, leaving out the entries a NumPy
  `valid` marks invalid (their weights are 0)."""
  if isinstance(values, tuple):
    summed = sum(weights[:, i, None, None, None] * values[i].astype(jnp.float32)
                 for i in _kept(valid, len(values)))
    return summed.astype(values[0].dtype)
  batch, count = values.shape[:2]
  summed = lax.dot_general(
      weights.astype(values.dtype), values.reshape(batch, count, -1),
      (((1,), (1,)), ((0,), (0,))))
  return summed.reshape(values.shape[:1] + values.shape[2:])


class STAUCell(nn.Module):
  """One STAU (or variant) update: (T, S, histories) -> (T_new, S_new).

  Attributes:
    num_hidden: C, channels of every state.
    filter_size: spatial size of the four convolutions.
    variant: what the cell computes (`VARIANTS`).
    residual: add the input S to S_new (gamma = 1 in the paper's Table 1).
    conv, norm: convolution and LayerNorm factories (see `unit.ConvNorm`).
  """
  num_hidden: int
  filter_size: int
  variant: CellVariant
  residual: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, temporal, spatial, temporal_history, spatial_history,
               lower_temporal, lower_spatial, lower_valid=None,
               history_order=None, lower_order=None):
    """Runs the cell.

    Args:
      temporal: T_{t-1}^k, (B, h, w, C).
      spatial: S_t^{k-1}, (B, h, w, C), the input from the layer below.
      temporal_history: t_att, tau entries: T_{t-tau..t-1}^k.
      spatial_history: s_att, tau entries: S_{t-tau..t-1}^{k-1}.
      lower_temporal: t_spatial, theta entries: T_{t-1}^j, j <= k.
      lower_spatial: s_spatial, theta entries: S_t^{j-1}, j <= k.
        Entries (B, h, w, C) each, as a (B, N, h, w, C) stack or a tuple
        (see `attention_weights`).
      lower_valid: optional (theta,) bool marking filled slots of the two
        lower-layer stacks; empty slots are masked out of beta's softmax (a
        NumPy mask: left out of the computation).
      history_order, lower_order: optional (tau,) and (theta,) slot indices,
        oldest (lowest) first, the order alpha and beta are recorded in
        (default: slot order).

    Returns:
      (T_t^k, S_t^k), each (B, h, w, C).
    """
    variant = self.variant
    conv_norms = lambda features, **inputs: unit.conv_norms(  # noqa: E731
        features, self.filter_size, self.conv, self.norm,
        tuple(inputs.items()))
    spatial_query, temporal_query = conv_norms(
        self.num_hidden, conv_s_next=spatial, conv_t_next=temporal)

    if variant.temporal_attention:
      if variant.alpha_from_spatial:
        alpha = attention_weights(spatial_history, spatial_query)
      else:
        alpha = attention_weights(temporal_history, temporal_query)
      temporal_gate = nn.sigmoid(temporal_query)
      unit.record(self, alpha=_in_order(alpha, history_order),
                  F_T=temporal_gate)
      temporal_trend = attend(alpha, temporal_history)
      temporal_fused = (temporal_gate * temporal
                        + (1 - temporal_gate) * temporal_trend)
    else:
      temporal_fused = temporal

    if variant.spatial_attention:
      if variant.beta_from_temporal:
        beta = attention_weights(lower_temporal, temporal_query, lower_valid)
      else:
        beta = attention_weights(lower_spatial, spatial_query, lower_valid)
      spatial_gate = nn.sigmoid(spatial_query)
      unit.record(self, beta=_in_order(beta, lower_order), F_S=spatial_gate)
      spatial_trend = attend(beta, lower_spatial, lower_valid)
      spatial_fused = spatial_gate * spatial + (1 - spatial_gate) * spatial_trend
    else:
      spatial_fused = spatial

    temporal_mixed, spatial_mixed = conv_norms(
        3 * self.num_hidden, conv_t=temporal_fused, conv_s=spatial_fused)
    t_gate, t_to_temporal, t_to_spatial = jnp.split(temporal_mixed, 3, axis=-1)
    s_gate, s_to_temporal, s_to_spatial = jnp.split(spatial_mixed, 3, axis=-1)
    temporal_update = nn.sigmoid(t_gate)
    spatial_update = nn.sigmoid(s_gate)
    new_temporal = (temporal_update * t_to_temporal
                    + (1 - temporal_update) * s_to_temporal)
    new_spatial = (spatial_update * s_to_spatial
                   + (1 - spatial_update) * t_to_spatial)
    if self.residual:
      new_spatial = new_spatial + spatial
    unit.record(self, U_T=temporal_update, U_S=spatial_update)
    return new_temporal, new_spatial


class STAULayer(nn.Module):
  """One STAU layer at one time step: the cell plus its ring buffers.

  State (per layer, through time): (T_{t-1}^k, temporal history T_{t-tau..t-1}^k,
  spatial history S_{t-tau..t-1}^{k-1}), the histories (B, tau, h, w, C) ring
  buffers written at slot t % tau (entries on axis 1, where the attention
  reads them). Flow (inside one step): the theta-slot stacks of the lower
  layers' T_{t-1}^j and S_t^{j-1}, restarted every step, written at slot
  k % theta. Where the layer index is a Python int (layer_loop='per_layer')
  they are tuples of theta entries instead, the lower layers' states
  themselves, and the slots not yet written are left out of the attention:
  no stack is built or kept for the backward pass. Passes S_t^k up.
  """
  num_hidden: int
  filter_size: int
  tau: int
  theta: int
  variant: CellVariant
  residual: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  flow_crosses_time = False

  def initial_state(self, batch, height, width, in_features, dtype):
    del in_features  # The encoder gives num_hidden channels, checked below.
    state = unit.zeros(batch, height, width, self.num_hidden, dtype)
    history = jnp.zeros((batch, self.tau, height, width, self.num_hidden),
                        dtype)
    return state, history, history

  def initial_flow(self, batch, height, width, dtype):
    stack = jnp.zeros((batch, self.theta, height, width, self.num_hidden),
                      dtype)
    return stack, stack

  @nn.compact
  def __call__(self, spatial, flow, state, step, layer):
    lower_temporal, lower_spatial = flow
    temporal, temporal_history, spatial_history = state
    slot = layer % self.theta
    lower_temporal = _with_entry(lower_temporal, slot, temporal)
    lower_spatial = _with_entry(lower_spatial, slot, spatial)
    lower_valid = (np if isinstance(layer, int) else jnp).arange(
        self.theta) <= layer
    new_temporal, new_spatial = STAUCell(
        self.num_hidden, self.filter_size, self.variant, self.residual,
        self.conv, self.norm, name='cell')(
            temporal, spatial, temporal_history, spatial_history,
            lower_temporal, lower_spatial, lower_valid,
            history_order=ring_order(step - 1, self.tau),
            lower_order=ring_order(layer, self.theta))
    time_slot = step % self.tau
    temporal_history = temporal_history.at[:, time_slot].set(new_temporal)
    spatial_history = spatial_history.at[:, time_slot].set(spatial)
    return (new_spatial, (lower_temporal, lower_spatial),
            (new_temporal, temporal_history, spatial_history))


def _with_entry(lower, slot, value):
  """The lower-layer slots `lower` with slot `slot` set to `value`: a
  (B, theta, h, w, C) stack, or where `slot` is a Python int a tuple of
  theta entries (B, h, w, C) (a stack becomes one)."""
  if isinstance(slot, int):
    if not isinstance(lower, tuple):
      lower = tuple(lower[:, i] for i in range(lower.shape[1]))
    return lower[:slot] + (value,) + lower[slot + 1:]
  return lower.at[:, slot].set(value)


# What STAU records, and the attention a variant needs to record it (None:
# every variant records it).
_RECORDS = (
    ('temporal_attention', unit.Record(
        'alpha', 'temporal attention weights over the last tau steps (TAM)',
        'step_attention')),
    ('spatial_attention', unit.Record(
        'beta', 'spatial attention weights over the last theta layers (SAM)',
        'layer_attention')),
    ('temporal_attention', unit.Record(
        'F_T', 'temporal fusion gate: how much of T_{t-1} is kept against '
        'the attended trend')),
    ('spatial_attention', unit.Record(
        'F_S', 'spatial fusion gate: how much of the input S is kept '
        'against the attended lower layers')),
    (None, unit.Record('U_T', 'temporal update gate: mixes the two streams '
                       'into T')),
    (None, unit.Record('U_S', 'spatial update gate: mixes the two streams '
                       'into S')),
)


def records(cell):
  """What the STAU variant `cell` records (unit.Record): the attention
  weights and fusion gates of the attentions it has, and its update gates."""
  variant = VARIANTS[cell]
  return tuple(record for needs, record in _RECORDS
               if needs is None or getattr(variant, needs))


def layer_groups(model, conv, norm):
  """STAU's layers for `config.model` (its `cell` picks the variant).

  Checks STAU's own fields: tau and theta (positive integers), residual (a
  bool) and the 'stau' front-end; ValueError naming the first bad one.
  """
  for name in ('tau', 'theta'):
    value = model.get(name)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.model.{name} must be a positive integer for '
                       f'the STAU units; got {value!r}.')
  if not isinstance(model.get('residual'), bool):
    raise ValueError(f'config.model.residual must be True or False for the '
                     f'STAU units; got {model.get("residual")!r}.')
  if model.frontend != 'stau':
    raise ValueError(
        f'config.model.cell={model.cell!r} needs config.model.frontend='
        f"'stau' (its spatial states have num_hidden channels, which the "
        f"encoder gives); got frontend={model.frontend!r}.")
  layer = functools.partial(
      STAULayer, model.num_hidden, model.filter_size, model.tau, model.theta,
      VARIANTS[model.cell], model.residual, conv, norm)
  return (unit.LayerGroup(layer, model.num_layers, 'cells'),)
