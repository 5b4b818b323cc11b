"""PredRNN-v2 (Wang et al. 2021), as OpenSTL's PredRNNv2_Model computes it.

The layers are PredRNN's ST-LSTMs (predrnn.py), unchanged: OpenSTL's
SpatioTemporalLSTMCellv2 only also returns the input terms of its two
memories, delta_c = sigmoid(i) * tanh(g) and delta_m = sigmoid(i') *
tanh(g'), each (B, h, w, C), which predrnn.PredRNNLayer sows. PredRNN-v2
adds, in training only, the memory decoupling loss: with one bias-free 1x1
conv `adapter` (C -> C) shared by all layers,

  u = adapter(delta_c) / |adapter(delta_c)|,  v = the same for delta_m,
      each channel normalized over the h*w positions (L2; norm clamped
      at 1e-12 as torch's F.normalize)
  cos[t, k, b, ch] = sum over positions of u * v
  loss = decouple_beta * mean over steps t, layers k, batch b, channels ch
         of |cos|

which pushes the two memories to hold different information. Training adds
it to the MSE (predictor.predict_with_auxiliary_loss). Reverse scheduled
sampling, PredRNN-v2's other training change, is config.
reverse_scheduled_sampling (stau_jax/sampling.py) and works for any unit.

Quirks of the reference: torch's cosine_similarity of the normalized
vectors divides their dot product by max(|u| |v|, 1e-8) = 1 (or gives 0 for
an all-zero delta, as here), so the dot product is the same number. The
adapter has num_hidden[0] channels there, so every layer needs the same
width, as here (one config.model.num_hidden).
"""
import functools
import numbers
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from stau_jax.models import predrnn

# PredRNN-v2's layers are PredRNN's.
layer_groups = predrnn.layer_groups

# torch.nn.functional.normalize's default clamp of the norm.
_NORM_EPSILON = 1e-12


def _normalize_over_space(x):
  """x (..., h, w, C) / its L2 norm over (h, w), clamped at _NORM_EPSILON."""
  squared_norm = jnp.sum(jnp.square(x), axis=(-3, -2), keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, _NORM_EPSILON**2))


class DecouplingLoss(nn.Module):
  """decouple_beta * mean |cos(adapter(delta_c), adapter(delta_m))|.

  Input: the terms PredRNN layers sow, {'memory_deltas': ((delta_c,
  delta_m),)}, each (T-1, L, B, h, w, C). Output: a float32 scalar.
  Parameter: 'adapter' (OpenSTL's `adapter.weight`).
  """
  num_hidden: int
  decouple_beta: float
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, terms):
    (delta_cell, delta_memory), = terms['memory_deltas']
    adapter = self.conv(self.num_hidden, (1, 1), use_bias=False,
                        name='adapter')
    cell, memory = (_normalize_over_space(adapter(x).astype(jnp.float32))
                    for x in (delta_cell, delta_memory))
    cosine = jnp.sum(cell * memory, axis=(-3, -2))
    return self.decouple_beta * jnp.mean(jnp.abs(cosine))


def decoupling_loss(model, conv):
  """The DecouplingLoss factory for `config.model` (its decouple_beta)."""
  beta = model.decouple_beta
  if (not isinstance(beta, numbers.Real) or isinstance(beta, bool)
      or beta < 0):
    raise ValueError(f'config.model.decouple_beta must be a number >= 0 '
                     f'(PredRNN-v2\'s decoupling loss weight); got {beta!r}.')
  return functools.partial(DecouplingLoss, model.num_hidden, float(beta),
                           conv)
