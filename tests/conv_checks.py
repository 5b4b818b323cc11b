"""What the convolution tests share (ops_test, onednn_test): inputs, a
gradient probe, and the check of mixed-precision convolutions."""
from jax import lax
import jax
import jax.numpy as jnp
import numpy as np

NHWC = ('NHWC', 'HWIO', 'NHWC')


def normal(seed, *shapes):
  """One float32 standard-normal array per shape, from one seeded stream."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes]


def value_and_grads(fn, lhs, rhs):
  """fn(lhs, rhs) and the gradients of a nonlinear scalar of it."""
  loss = lambda lhs, rhs: jnp.sum(jnp.sin(fn(lhs, rhs)))  # noqa: E731
  return fn(lhs, rhs), jax.grad(loss, argnums=(0, 1))(lhs, rhs)


def assert_float32_math_on_bfloat16_operands(conv, lhs, rhs, strides,
                                             padding):
  """conv(lhs, rhs) (bfloat16 operands, float32 accumulation) and its
  gradients equal float32 lax on the rounded operands, and are float32."""
  rounded = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
  want_value, want_grads = value_and_grads(
      lambda lhs, rhs: lax.conv_general_dilated(
          rounded(lhs), rounded(rhs), strides, padding, dimension_numbers=NHWC,
          precision=lax.Precision.HIGHEST), lhs, rhs)
  value, grads = value_and_grads(conv, lhs, rhs)
  assert value.dtype == jnp.float32, value.dtype
  # The products of bfloat16 operands are exact in float32 sums.
  np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-4)
  for grad, want in zip(grads, want_grads):
    assert grad.dtype == jnp.float32, grad.dtype
    # The backward rounds the incoming gradient to bfloat16 too.
    np.testing.assert_allclose(grad, want, rtol=0,
                               atol=0.02 * float(np.abs(want).max()))
