"""stau_jax.onednn: oneDNN's convolutions equal lax's, in value and gradient."""
import os
import platform
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from stau_jax import onednn
from stau_jax import ops
from tests import conv_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NHWC = conv_checks.NHWC
_normal = conv_checks.normal
_value_and_grads = conv_checks.value_and_grads
_LINUX_X86 = sys.platform == 'linux' and platform.machine() == 'x86_64'


class AvailabilityTest(absltest.TestCase):

  def test_built_and_loaded_on_linux_x86_64(self):
    """`pip install -e .` builds it there (setup.py); a broken build fails
    here instead of silently falling back to XLA's convolutions."""
    if not _LINUX_X86:
      self.skipTest('the oneDNN wheel is for Linux x86-64 only')
    self.assertTrue(onednn.available(), onednn._status()[1])

  def test_unavailable_falls_back_and_explains(self):
    try:
      with mock.patch.dict(os.environ, {'STAU_JAX_ONEDNN': '0'}):
        onednn._status.cache_clear()
        self.assertFalse(onednn.available())
        self.assertEqual(ops.resolve_conv_impl('auto'),
                         {'cpu': 'fast', 'gpu': 'resample'}.get(
                             jax.default_backend(), 'xla'))
        with self.assertRaisesRegex(
            ValueError, r"conv_impl='onednn' cannot run: STAU_JAX_ONEDNN=0 "
            r".*pip install -e \..*conv_impl='fast'"):
          ops.resolve_conv_impl('onednn')
    finally:
      onednn._status.cache_clear()

  def test_cli_refuses_onednn_where_unavailable_in_one_line(self):
    result = subprocess.run(
        [sys.executable, '-m', 'stau_jax.benchmark', '--config=configs/tiny.py',
         '--config.model.conv_impl=onednn'],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO, STAU_JAX_ONEDNN='0'))
    self.assertEqual(result.returncode, 1, result.stderr[-2000:])
    self.assertNotIn('Traceback', result.stderr)
    errors = [line for line in result.stderr.splitlines()
              if line.startswith('error:')]
    self.assertLen(errors, 1, result.stderr)
    self.assertRegex(errors[0], r"^error: config.model.conv_impl='onednn' "
                     r"cannot run: STAU_JAX_ONEDNN=0")


@absltest.skipUnless(onednn.available(), 'oneDNN extension not built here')
class ConvTest(parameterized.TestCase):

  @parameterized.parameters(
      # batch, height, width, in, out, kernel, stride, padding
      (2, 16, 16, 8, 12, 5, (1, 1), ((2, 2), (2, 2))),
      (1, 7, 10, 3, 4, 3, (1, 1), ((0, 1), (2, 0))),
      (2, 16, 16, 8, 8, 3, (2, 2), ((1, 1), (1, 1))),
      (1, 15, 10, 3, 4, 3, (2, 1), ((1, 1), (0, 0))),
      (3, 12, 9, 4, 3, 5, (3, 3), ((0, 0), (0, 0))),
  )
  def test_float32_equals_lax(self, batch, height, width, features_in,
                              features_out, kernel, strides, padding):
    lhs, rhs = _normal(0, (batch, height, width, features_in),
                       (kernel, kernel, features_in, features_out))
    value, grads = _value_and_grads(
        lambda lhs, rhs: onednn.conv(lhs, rhs, strides, padding), lhs, rhs)
    want_value, want_grads = _value_and_grads(
        lambda lhs, rhs: lax.conv_general_dilated(
            lhs, rhs, strides, padding, dimension_numbers=_NHWC,
            precision=lax.Precision.HIGHEST), lhs, rhs)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-4)
    for grad, want in zip(grads, want_grads):
      self.assertEqual(grad.shape, want.shape)
      np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-4)

  def test_over_ten_million_multiply_adds_equals_lax(self):
    """Such convolutions run on all threads, the ones above on one."""
    lhs, rhs = _normal(6, (4, 16, 16, 64), (5, 5, 64, 64))
    rhs = rhs / np.sqrt(5 * 5 * 64)  # outputs of order 1, as in a model
    padding = ((2, 2), (2, 2))
    value, grads = _value_and_grads(
        lambda lhs, rhs: onednn.conv(lhs, rhs, (1, 1), padding), lhs, rhs)
    want_value, want_grads = _value_and_grads(
        lambda lhs, rhs: lax.conv_general_dilated(
            lhs, rhs, (1, 1), padding, dimension_numbers=_NHWC,
            precision=lax.Precision.HIGHEST), lhs, rhs)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-4)
    for grad, want in zip(grads, want_grads):
      np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-4)

  @parameterized.parameters(
      # batch, size, in, out, groups, kernel, stride, padding
      (2, 16, 8, 12, 2, 5, (1, 1), ((2, 2), (2, 2))),
      (1, 9, 6, 9, 3, 3, (2, 1), ((1, 0), (1, 1))),
      (4, 16, 128, 384, 2, 5, (1, 1), ((2, 2), (2, 2))),  # multi-threaded
  )
  def test_grouped_equals_lax(self, batch, size, features_in, features_out,
                              groups, kernel, strides, padding):
    lhs, rhs = _normal(7, (batch, size, size, features_in),
                       (kernel, kernel, features_in // groups, features_out))
    rhs = rhs / np.sqrt(kernel * kernel * features_in // groups)
    value, grads = _value_and_grads(
        lambda lhs, rhs: onednn.conv(lhs, rhs, strides, padding,
                                     groups=groups), lhs, rhs)
    want_value, want_grads = _value_and_grads(
        lambda lhs, rhs: lax.conv_general_dilated(
            lhs, rhs, strides, padding, dimension_numbers=_NHWC,
            feature_group_count=groups, precision=lax.Precision.HIGHEST),
        lhs, rhs)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-4)
    for grad, want in zip(grads, want_grads):
      self.assertEqual(grad.shape, want.shape)
      np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-4)

  def test_grouped_is_its_groups_side_by_side(self):
    """Group g sees only its input channels and gives its own outputs."""
    lhs, rhs_a, rhs_b = _normal(8, (2, 8, 8, 6), (3, 3, 3, 4), (3, 3, 3, 4))
    padding = ((1, 1), (1, 1))
    got = onednn.conv(lhs, jnp.concatenate([rhs_a, rhs_b], axis=-1), (1, 1),
                      padding, jnp.bfloat16, groups=2)
    for half, rhs, out in ((slice(0, 3), rhs_a, slice(0, 4)),
                           (slice(3, 6), rhs_b, slice(4, 8))):
      np.testing.assert_array_equal(
          got[..., out],
          onednn.conv(lhs[..., half], rhs, (1, 1), padding, jnp.bfloat16))

  def test_a_wrong_kernel_fails_the_comparison(self):
    lhs, rhs = _normal(1, (1, 8, 8, 3), (3, 3, 3, 2))
    got = onednn.conv(lhs, rhs, (1, 1), ((1, 1), (1, 1)))
    flipped = lax.conv_general_dilated(lhs, jnp.flip(rhs, 0), (1, 1), 'SAME',
                                       dimension_numbers=_NHWC)
    self.assertGreater(float(jnp.max(jnp.abs(got - flipped))), 0.1)

  def test_bfloat16_operands_accumulate_in_float32(self):
    lhs, rhs = _normal(2, (2, 16, 16, 16), (5, 5, 16, 24))
    padding = ((2, 2), (2, 2))
    conv_checks.assert_float32_math_on_bfloat16_operands(
        lambda lhs, rhs: onednn.conv(lhs, rhs, (1, 1), padding, jnp.bfloat16),
        lhs, rhs, (1, 1), padding)

  def test_backward_keeps_the_bfloat16_operands_not_the_inputs(self):
    lhs, rhs = _normal(9, (2, 8, 8, 4), (3, 3, 4, 6))
    _, backward = jax.vjp(
        lambda lhs, rhs: onednn.conv(lhs, rhs, (1, 1), ((1, 1), (1, 1)),
                                     jnp.bfloat16), lhs, rhs)
    kept = sorted((leaf.shape, str(leaf.dtype))
                  for leaf in jax.tree.leaves(backward))
    self.assertEqual(kept, [((2, 8, 8, 4), 'bfloat16'),
                            ((3, 3, 4, 6), 'bfloat16')])

  def test_bfloat16_inputs_give_bfloat16(self):
    lhs, rhs = _normal(3, (1, 6, 6, 4), (3, 3, 4, 5))
    out = onednn.conv(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16),
                      (1, 1), ((1, 1), (1, 1)))
    self.assertEqual(out.dtype, jnp.bfloat16)
    want = lax.conv_general_dilated(lhs, rhs, (1, 1), 'SAME',
                                    dimension_numbers=_NHWC)
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=0.05,
                               atol=0.1)

  def test_inside_jit_scan_and_vmap(self):
    lhs, rhs = _normal(4, (3, 2, 8, 8, 4), (3, 3, 4, 4))
    padding = ((1, 1), (1, 1))

    def run(conv):
      def step(x, _):
        y = jnp.tanh(conv(x, rhs))
        return y, jnp.sum(y)
      return lambda lhs: jnp.sum(lax.scan(step, lhs, None, length=3)[1])

    ours = run(lambda x, w: onednn.conv(x, w, (1, 1), padding))
    theirs = run(lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=_NHWC))
    got = jax.jit(jax.vmap(jax.value_and_grad(ours)))(lhs)
    want = jax.vmap(jax.value_and_grad(theirs))(lhs)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

  def test_forward_kernels_are_packed_where_their_layout_keeps_its_size(self):
    """A packed kernel (in the forward primitive's own layout) gives the
    same forward pass as the HWIO kernel reordered by the call; kernels whose
    layout would be padded (12 outputs, blocked by 16) are not packed."""
    padding = ((2, 2), (2, 2))
    for dtype in (jnp.float32, jnp.bfloat16):
      lhs, rhs = _normal(8, (2, 8, 8, 64), (5, 5, 32, 64))
      lhs, rhs = lhs.astype(dtype), (rhs / 40).astype(dtype)
      out_shape = (2, 8, 8, 64)
      packed = onednn._packed_kernel(lhs.shape, rhs, out_shape, (1, 1),
                                     padding, 2)
      self.assertIsNotNone(packed)
      self.assertEqual((packed.shape, packed.dtype), (rhs.shape, rhs.dtype))
      self.assertFalse(np.array_equal(packed, rhs))  # another layout
      np.testing.assert_array_equal(
          onednn._call(0, lhs, packed, out_shape, (1, 1), padding, 2,
                       packed=True),
          onednn._call(0, lhs, rhs, out_shape, (1, 1), padding, 2))
    lhs, rhs = _normal(9, (1, 8, 8, 8), (3, 3, 8, 12))
    self.assertIsNone(onednn._packed_kernel(
        lhs.shape, rhs, (1, 8, 8, 12), (1, 1), ((1, 1), (1, 1)), 1))

  def test_a_kernel_shared_by_a_loop_is_packed_once_outside_it(self):
    lhs, rhs = _normal(10, (2, 8, 8, 64), (3, 3, 64, 64))

    def run(lhs, rhs):
      step = lambda x, _: (jnp.tanh(onednn.conv(x, rhs / 24, (1, 1),
                                                ((1, 1), (1, 1)))), None)
      return lax.scan(step, lhs, None, length=4)[0]

    hlo = jax.jit(run).lower(lhs, rhs).compile().as_text()
    body = hlo[hlo.index(hlo.split('body=')[1].split(',')[0].split()[0]):]
    body = body[:body.index('\n}')]
    self.assertEqual(hlo.count(onednn.PACK_TARGET), 1)
    self.assertNotIn(onednn.PACK_TARGET, body)
    self.assertIn(onednn.TARGET, body)

  def test_a_bad_call_is_an_error_not_a_crash(self):
    lhs, rhs = _normal(5, (1, 4, 4, 2), (3, 3, 2, 2))
    with self.assertRaisesRegex(Exception, 'onednn_conv: unknown kind'):
      jax.block_until_ready(onednn._call(7, lhs, rhs, (1, 2, 2, 2), (1, 1),
                                         ((0, 0), (0, 0)), 1))
    with self.assertRaisesRegex(Exception, 'onednn_conv: inconsistent shapes'):
      jax.block_until_ready(onednn._call(0, lhs, rhs, (1, 2, 2, 2), (1, 1),
                                         ((0, 0), (0, 0)), 2))
    with self.assertRaisesRegex(Exception, 'only forward kernels'):
      jax.block_until_ready(onednn._call(1, lhs[:, :2, :2], rhs, lhs.shape,
                                         (1, 1), ((0, 0), (0, 0)), 1,
                                         packed=True))


if __name__ == '__main__':
  absltest.main()
