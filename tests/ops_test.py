"""stau_jax.ops equals lax convolutions in value and gradient."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from stau_jax import benchmark
from stau_jax import onednn
from stau_jax import ops
from tests import conv_checks

_NHWC = conv_checks.NHWC
_normal = conv_checks.normal
_value_and_grads = conv_checks.value_and_grads
# Every lowering that runs here (oneDNN's where its extension is built).
_IMPLS = ('fast', 'resample', 'xla') + (('onednn',) if onednn.available()
                                        else ())


def _equations(jaxpr):
  """All equations of a jaxpr, those of its sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in benchmark.sub_jaxprs(eqn):
      yield from _equations(sub)


class ConvTest(parameterized.TestCase):

  def assert_same(self, fast, reference, lhs, rhs):
    value, grads = _value_and_grads(fast, lhs, rhs)
    want_value, want_grads = _value_and_grads(reference, lhs, rhs)
    self.assertEqual(value.shape, want_value.shape)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-4)
    for grad, want in zip(grads, want_grads):
      np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-4)

  @parameterized.parameters(
      # batch, height, width, in, out, kernel, stride, padding
      (2, 16, 16, 8, 12, 5, 1, 'SAME'),
      (1, 7, 10, 3, 4, 3, 1, 'SAME'),
      (2, 9, 6, 3, 5, 3, 1, 'VALID'),
      (1, 6, 5, 2, 3, 1, 1, 'SAME'),
      (2, 16, 16, 8, 8, 3, 2, ((1, 1), (1, 1))),
      (1, 15, 10, 3, 4, 3, 2, 'SAME'),
      (2, 12, 9, 4, 3, 5, 3, 'VALID'),
      (1, 8, 8, 2, 3, 4, 2, ((2, 1), (0, -1))),
  )
  def test_conv(self, batch, height, width, features_in, features_out, kernel,
                stride, padding):
    lhs, rhs = _normal(0, (batch, height, width, features_in),
                       (kernel, kernel, features_in, features_out))
    conv = lambda impl: lambda lhs, rhs: ops.conv(  # noqa: E731
        lhs, rhs, (stride, stride), padding, dimension_numbers=_NHWC,
        impl=impl)
    reference = lambda lhs, rhs: lax.conv_general_dilated(  # noqa: E731
        lhs, rhs, (stride, stride), padding, dimension_numbers=_NHWC)
    for impl in _IMPLS:
      self.assert_same(conv(impl), reference, lhs, rhs)

  def test_grouped_conv(self):
    """feature_group_count: oneDNN's grouped convolution, lax elsewhere."""
    lhs, rhs = _normal(3, (2, 8, 8, 6), (3, 3, 3, 8))
    conv = lambda impl: lambda lhs, rhs: ops.conv(  # noqa: E731
        lhs, rhs, (1, 1), 'SAME', dimension_numbers=_NHWC,
        feature_group_count=2, impl=impl)
    reference = lambda lhs, rhs: lax.conv_general_dilated(  # noqa: E731
        lhs, rhs, (1, 1), 'SAME', dimension_numbers=_NHWC,
        feature_group_count=2)
    for impl in _IMPLS:
      self.assert_same(conv(impl), reference, lhs, rhs)

  @parameterized.parameters(
      (2, 16, 16, 8, 12, 5, 1, 'SAME'),
      (2, 9, 6, 3, 5, 3, 1, 'VALID'),
      (1, 6, 5, 2, 3, 1, 1, 'SAME'),
      (1, 15, 10, 3, 4, 3, 2, 'SAME'),
  )
  def test_mixed_precision_conv_is_float32_math_on_bfloat16_operands(
      self, batch, height, width, features_in, features_out, kernel, stride,
      padding):
    lhs, rhs = _normal(1, (batch, height, width, features_in),
                       (kernel, kernel, features_in, features_out))
    for impl in _IMPLS:
      conv_checks.assert_float32_math_on_bfloat16_operands(
          lambda lhs, rhs, impl=impl: ops.conv(
              lhs, rhs, (stride, stride), padding, dimension_numbers=_NHWC,
              impl=impl, operand_dtype=jnp.bfloat16),
          lhs, rhs, (stride, stride), padding)

  @parameterized.parameters(
      (2, 4, 4, 8, 8, 3, 2, ((1, 2), (1, 2))),
      (1, 5, 3, 3, 4, 3, 2, 'SAME'),
      (2, 4, 6, 3, 2, 5, 3, 'VALID'),
      (1, 6, 5, 2, 3, 4, 2, ((0, 1), (2, 2))),
  )
  def test_conv_transpose(self, batch, height, width, features_in,
                          features_out, kernel, stride, padding):
    lhs, rhs = _normal(1, (batch, height, width, features_in),
                       (kernel, kernel, features_out, features_in))
    conv_transpose = lambda impl: lambda lhs, rhs: ops.conv_transpose(  # noqa: E731
        lhs, rhs, (stride, stride), padding, impl=impl)
    reference = lambda lhs, rhs: lax.conv_transpose(  # noqa: E731
        lhs, rhs, (stride, stride), padding, dimension_numbers=_NHWC,
        transpose_kernel=True)
    for impl in set(_IMPLS) - {'xla'}:
      self.assert_same(conv_transpose(impl), reference, lhs, rhs)

  def test_flax_conv_same_params_and_grads(self):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 6, 4)),
                    jnp.float32)
    reference = nn.Conv(5, (5, 5), padding='SAME')
    fast = nn.Conv(5, (5, 5), padding='SAME', conv_general_dilated=(
        functools.partial(ops.conv, impl='fast')))
    params = reference.init(jax.random.PRNGKey(0), x)
    fast_params = fast.init(jax.random.PRNGKey(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, fast_params)
    loss = lambda model: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda p: jnp.sum(jnp.sin(model.apply(p, x)))))(params)
    jax.tree_util.tree_map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-4),
        loss(fast), loss(reference))

  @parameterized.parameters('fast', 'resample')
  def test_rewrites_leave_no_strided_or_dilated_convs(self, impl):
    """Forward and backward of a strided and a transposed conv run only
    matmuls and stride-1, undilated convs ('fast' and 'resample' exist for
    that)."""
    lhs = jnp.ones((1, 8, 8, 2))
    strided = lambda lhs, rhs: ops.conv(  # noqa: E731
        lhs, rhs, (2, 2), 'SAME', dimension_numbers=_NHWC, impl=impl)
    transposed = lambda lhs, rhs: ops.conv_transpose(  # noqa: E731
        lhs, rhs, (2, 2), 'SAME', impl=impl)
    convs = []
    for fn in (strided, transposed):
      jaxpr = jax.make_jaxpr(jax.grad(
          lambda lhs, rhs, fn=fn: jnp.sum(fn(lhs, rhs)), argnums=(0, 1)))(
              lhs, jnp.ones((3, 3, 2, 2)))
      convs += [eqn for eqn in _equations(jaxpr.jaxpr)
                if eqn.primitive.name == 'conv_general_dilated']
    self.assertNotEmpty(convs)
    for eqn in convs:
      self.assertEqual(tuple(eqn.params['window_strides']), (1, 1))
      self.assertEqual(tuple(eqn.params['lhs_dilation']), (1, 1))
      self.assertEqual(tuple(eqn.params['rhs_dilation']), (1, 1))

  def test_resample_keeps_lax_for_stride_one_convs(self):
    lhs, rhs = jnp.ones((1, 8, 8, 2)), jnp.ones((5, 5, 2, 3))
    primitives = lambda impl: {  # noqa: E731
        eqn.primitive.name for eqn in _equations(jax.make_jaxpr(
            lambda lhs, rhs: ops.conv(lhs, rhs, (1, 1), 'SAME',
                                      dimension_numbers=_NHWC, impl=impl))(
                                          lhs, rhs).jaxpr)}
    self.assertTrue(any(name.startswith('custom_vjp')
                        for name in primitives('fast')))
    self.assertEqual(primitives('resample'), {'conv_general_dilated'})

  def test_resolve_conv_impl(self):
    self.assertEqual(ops.resolve_conv_impl('xla'), 'xla')
    self.assertEqual(ops.resolve_conv_impl('resample'), 'resample')
    cpu = 'onednn' if onednn.available() else 'fast'
    self.assertEqual(ops.resolve_conv_impl('auto'),
                     {'cpu': cpu, 'gpu': 'resample'}.get(
                         jax.default_backend(), 'xla'))
    with self.assertRaisesRegex(ValueError, 'conv_impl'):
      ops.resolve_conv_impl('cudnn')

  def test_resolve_auto_falls_back_for_backends_not_named(self):
    choices = ('auto', 'a', 'b')
    self.assertEqual(ops.resolve_auto('opt', 'a', choices, 'b'), 'a')
    self.assertEqual(
        ops.resolve_auto('opt', 'auto', choices, 'b',
                         **{jax.default_backend(): 'a'}), 'a')
    self.assertEqual(ops.resolve_auto('opt', 'auto', choices, 'b',
                                      not_a_backend='a'), 'b')
    with self.assertRaisesRegex(ValueError, r"opt must be one of .*; got 'c'"):
      ops.resolve_auto('opt', 'c', choices, 'b')


class BroadcastLeadingTest(absltest.TestCase):

  def test_values_and_gradient_of_broadcast_to(self):
    value, cotangent = _normal(3, (1, 4, 5), (6, 4, 5))
    loss = lambda fn: jax.grad(  # noqa: E731
        lambda v: jnp.sum(jnp.sin(fn(v, (6, 4, 5))) * cotangent))(value)
    np.testing.assert_array_equal(ops.broadcast_leading(value, (6, 4, 5)),
                                  jnp.broadcast_to(value, (6, 4, 5)))
    np.testing.assert_allclose(loss(ops.broadcast_leading),
                               loss(jnp.broadcast_to), rtol=1e-6, atol=1e-6)

  def test_cpu_gradient_adds_slices_instead_of_reducing(self):
    if jax.default_backend() != 'cpu':
      self.skipTest('the slice sum is the CPU\'s')
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: jnp.sum(
        jnp.sin(ops.broadcast_leading(v, (8, 3)))), argnums=0))(
            jnp.ones((1, 3)))
    names = [eqn.primitive.name for eqn in _equations(jaxpr.jaxpr)]
    self.assertEqual(names.count('reduce_sum'), 1)  # the loss's own sum
    self.assertEqual(names.count('add'), 7)  # 8 slices summed


if __name__ == '__main__':
  absltest.main()
