"""Test helper: parameters with every leaf randomized.

Freshly initialized LayerNorm scales are 1 and biases 0, which would hide a
wrong scale/bias pairing or order; the tests compare models on perturbed
parameters instead.
"""
import jax
import numpy as np


def perturb(params, scale, seed):
  """params + scale * N(0, 1) noise, independently for every leaf, as float32
  numpy arrays (drawn by numpy: jax.random compiles a program per shape)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda leaf: (np.asarray(leaf, np.float32)
                    + scale * rng.standard_normal(np.shape(leaf))
                    ).astype(np.float32), params)
