"""Test helper: parameters with every leaf randomized.

Freshly initialized LayerNorm scales are 1 and biases 0, which would hide a
wrong scale/bias pairing or order; the tests compare models on perturbed
parameters instead.
"""
import jax


def perturb(params, scale, seed):
  """params + scale * N(0, 1) noise, independently for every leaf."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      leaf + scale * jax.random.normal(key, leaf.shape)
      for leaf, key in zip(leaves, keys)])
