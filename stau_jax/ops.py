"""Convolutions lowered to the fast paths of XLA:CPU (or run by oneDNN).

`broadcast_leading` shares a parameter across a batch with a gradient
XLA:CPU sums fast (the LayerNorms' scale and bias).

`conv` is a drop-in for `lax.conv_general_dilated` on NHWC inputs and HWIO
kernels (pass it to `nn.Conv(conv_general_dilated=...)`); `conv_transpose`
is `lax.conv_transpose(..., transpose_kernel=True)`. Both return the same
values and gradients as lax to float tolerance. With impl 'fast' (chosen by
'auto' on CPU where oneDNN is unavailable) they rewrite every convolution as
matmuls or stride-1, undilated convolutions, whose backward passes XLA:CPU
runs well:
- a strided conv becomes one matmul over its strided taps (im2col; 'resample'
  uses space-to-depth followed by a stride-1 conv instead);
- a transposed (input-dilated) conv becomes a stride-1 conv to s*s phases
  followed by depth-to-space (sub-pixel convolution);
- the stride-1 conv has a custom VJP: the input gradient is a forward conv
  with the flipped kernel, the weight gradient one matmul per kernel tap;
- a 1x1 conv is a matmul (lax's 1x1 conv gradients with one input or output
  channel are slow on CPU).
On XLA:CPU, lax's input-dilated convolutions (the backward of strided convs,
transposed convs) are very slow, and lax's 5x5 conv gradients inside the
scanned model were slower still (docs/speed.md has the figures).
With impl 'onednn' (chosen by 'auto' on CPU when stau_jax/onednn.py's
extension is built) convolutions, strided ones included, and their
gradients are oneDNN's (about 2.4x XLA:CPU's rate on this model's 5x5
convs); transposed convs become sub-pixel convs and 1x1 convs matmuls as
with 'fast'.
With impl 'resample' (chosen by 'auto' on GPU) only the first two rewrites
apply and stride-1 convs stay lax's (cuDNN's kernels): cuDNN picks slow FFT
algorithms for the Moving MNIST decoder's transposed convs and their
gradients. 'xla' (chosen by 'auto' elsewhere, e.g. TPU) keeps lax for
everything.
"""
import functools
import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from stau_jax import onednn

CONV_IMPLS = ('auto', 'xla', 'fast', 'resample', 'onednn')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_auto(name, value, choices, other, **by_backend):
  """Checks `value` against `choices` and resolves 'auto' for this backend.

  'auto' becomes by_backend[jax.default_backend()] (keywords cpu=, gpu=, ...)
  or `other` for a backend not named. Shared by every per-backend option
  (conv_impl here, the model's layer_loop and remat).
  """
  if value not in choices:
    raise ValueError(f'{name} must be one of {choices}; got {value!r}.')
  if value == 'auto':
    return by_backend.get(jax.default_backend(), other)
  return value


def resolve_conv_impl(impl='auto'):
  """'auto' -> 'onednn' on CPU ('fast' where oneDNN is unavailable),
  'resample' on GPU, else 'xla'. Others are checked: ValueError for an
  unknown one, or 'onednn' off CPU or unavailable (saying how to fix it)."""
  resolved = resolve_auto('conv_impl', impl, CONV_IMPLS, 'xla', cpu='onednn',
                          gpu='resample')
  if resolved != 'onednn':
    return resolved
  if impl == 'auto':
    return 'onednn' if onednn.available() else 'fast'
  if jax.default_backend() != 'cpu':
    raise ValueError(f"config.model.conv_impl='onednn' runs on the CPU "
                     f'only; this backend is {jax.default_backend()!r}: '
                     f"use 'auto'.")
  onednn.check_available()
  return resolved


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
         precision=None, impl='auto', operand_dtype=None, **kwargs):
  """`lax.conv_general_dilated` for 2D NHWC x HWIO, on the fast paths.

  Args:
    lhs: (B, H, W, I) input.
    rhs: (kh, kw, I, O) kernel.
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision: as `lax.conv_general_dilated`.
    impl: one of CONV_IMPLS (see `resolve_conv_impl`).
    operand_dtype: None, or the dtype (bfloat16) every matmul and conv casts
      its operands to, accumulating in lhs's dtype (mixed precision); the
      result and the gradients keep lhs's and rhs's dtypes.
    **kwargs: passed to lax when it is used (e.g. preferred_element_type).

  Returns:
    (B, H', W', O), the same as `lax.conv_general_dilated`.
  """
  mixed = _mixed(lhs.dtype, operand_dtype)
  lax_conv = functools.partial(
      lax.conv_general_dilated, *mixed.cast(lhs, rhs), window_strides,
      padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision,
      **mixed.accumulate, **kwargs)
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  impl = resolve_conv_impl(impl)
  if impl == 'onednn' and not onednn.supports(lhs.dtype, operand_dtype):
    impl = 'fast'
  groups_supported = feature_group_count == 1 or (
      impl == 'onednn' and all(d == 1 for d in lhs_dilation or (1, 1)))
  supported = (lhs.ndim == 4 and groups_supported and not kwargs
               and dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                      _NHWC)
               and all(d == 1 for d in rhs_dilation or (1, 1)))
  if not supported or impl == 'xla':
    return lax_conv()
  strides = tuple(window_strides)
  dilation = tuple(lhs_dilation or (1, 1))
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(
        [(n - 1) * d + 1 for n, d in zip(lhs.shape[1:3], dilation)],
        rhs.shape[:2], strides, padding)
  padding = tuple(tuple(p) for p in padding)
  if dilation != (1, 1):
    if strides != (1, 1):
      return lax_conv()
    return _subpixel_conv(lhs, rhs, dilation, padding, precision, impl,
                          operand_dtype)
  one_by_one = (rhs.shape[:2] == (1, 1) and strides == (1, 1)
                and padding == ((0, 0), (0, 0)) and feature_group_count == 1)
  if one_by_one and impl != 'resample':
    return mixed.matmul(lhs, rhs[0, 0], precision)
  if impl == 'onednn':
    cropped = _pad_or_crop(lhs, tuple((min(lo, 0), min(hi, 0))
                                      for lo, hi in padding))
    return onednn.conv(cropped, rhs, strides,
                       tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding),
                       mixed.operand_dtype, feature_group_count)
  if strides != (1, 1):
    if impl == 'resample':
      return _space_to_depth_conv(lhs, rhs, strides, padding, precision,
                                  mixed)
    return _im2col_conv(_pad_or_crop(lhs, padding), rhs, strides, precision,
                        mixed)
  if impl == 'resample':
    return lax_conv()
  return _conv_valid(_pad_or_crop(lhs, padding), rhs, precision,
                     mixed.operand_dtype)


class _Mixed(NamedTuple):
  """Operands cast to `operand_dtype` (None: kept), accumulated in `dtype`."""
  dtype: Any
  operand_dtype: Any

  def cast(self, *arrays):
    if self.operand_dtype is None:
      return arrays
    return tuple(a.astype(self.operand_dtype) for a in arrays)

  @property
  def accumulate(self):
    """lax's keyword for the accumulation dtype (none when not mixed)."""
    return ({} if self.operand_dtype is None
            else {'preferred_element_type': self.dtype})

  def matmul(self, a, b, precision):
    return jnp.matmul(*self.cast(a, b), precision=precision, **self.accumulate)

  def dot_general(self, a, b, dimension_numbers, precision):
    return lax.dot_general(*self.cast(a, b), dimension_numbers,
                           precision=precision, **self.accumulate)


def _mixed(dtype, operand_dtype):
  """`_Mixed` for results in `dtype`; not mixed when the dtypes agree."""
  if operand_dtype is not None and jnp.dtype(operand_dtype) == dtype:
    operand_dtype = None
  return _Mixed(dtype, None if operand_dtype is None
                else jnp.dtype(operand_dtype))


def _pad_or_crop(lhs, padding):
  """Applies explicit ((lo, hi), (lo, hi)) padding; negative values crop."""
  lhs = jnp.pad(lhs, ((0, 0),) + tuple((max(lo, 0), max(hi, 0))
                                       for lo, hi in padding) + ((0, 0),))
  return lhs[:, max(-padding[0][0], 0):lhs.shape[1] - max(-padding[0][1], 0),
             max(-padding[1][0], 0):lhs.shape[2] - max(-padding[1][1], 0)]


def _im2col_conv(lhs, rhs, strides, precision, mixed):
  """A strided 'VALID' conv as one matmul: the kh*kw strided taps side by side
  in channels (B, H', W', kh*kw*I) times the kernel as (kh*kw*I, O)."""
  (sh, sw), (kh, kw) = strides, rhs.shape[:2]
  out_h = (lhs.shape[1] - kh) // sh + 1
  out_w = (lhs.shape[2] - kw) // sw + 1
  columns = jnp.concatenate(
      [lhs[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
       for i in range(kh) for j in range(kw)], axis=-1)
  return mixed.matmul(columns, rhs.reshape(-1, rhs.shape[-1]), precision)


def conv_transpose(lhs, rhs, strides, padding, precision=None, impl='auto',
                   operand_dtype=None):
  """`lax.conv_transpose(lhs, rhs, strides, padding, transpose_kernel=True)`.

  Args:
    lhs: (B, h, w, I) input.
    rhs: (kh, kw, O, I) kernel, laid out as flax's
      `nn.ConvTranspose(transpose_kernel=True)` (and PyTorch) store it.
    strides: the upsampling factors (sh, sw).
    padding: 'SAME', 'VALID' or ((lo, hi), (lo, hi)) as lax.conv_transpose.
    precision, impl, operand_dtype: as `conv`.

  Returns:
    (B, h', w', O).
  """
  impl = resolve_conv_impl(impl)
  if impl == 'xla':
    mixed = _mixed(lhs.dtype, operand_dtype)
    return lax.conv_transpose(*mixed.cast(lhs, rhs), strides, padding,
                              dimension_numbers=_NHWC, transpose_kernel=True,
                              precision=precision, **mixed.accumulate)
  kernel_size = rhs.shape[:2]
  if isinstance(padding, str):
    padding = [_conv_transpose_padding(k, s, padding)
               for k, s in zip(kernel_size, strides)]
  kernel = jnp.swapaxes(jnp.flip(rhs, (0, 1)), 2, 3)
  return conv(lhs, kernel, (1, 1), padding, lhs_dilation=strides,
              dimension_numbers=_NHWC, precision=precision, impl=impl,
              operand_dtype=operand_dtype)


def _conv_transpose_padding(kernel_size, stride, padding):
  """lax.conv_transpose's explicit padding for 'SAME' / 'VALID'."""
  if padding == 'SAME':
    pad_len = kernel_size + stride - 2
    if stride > kernel_size - 1:
      pad_a = kernel_size - 1
    else:
      pad_a = int(np.ceil(pad_len / 2))
  else:
    pad_len = kernel_size + stride - 2 + max(kernel_size - stride, 0)
    pad_a = kernel_size - 1
  return pad_a, pad_len - pad_a


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_valid(lhs, rhs, precision=None, operand_dtype=None):
  """Stride-1 'VALID' conv: (B, H, W, I), (kh, kw, I, O) -> (B, H-kh+1, W-kw+1, O).

  With `operand_dtype` (mixed precision) lhs and rhs are cast to it inside,
  accumulation and the gradients stay in lhs's and rhs's dtypes.
  """
  mixed = _mixed(lhs.dtype, operand_dtype)
  if mixed.operand_dtype is None:
    return lax.conv_general_dilated(lhs, rhs, (1, 1), 'VALID',
                                    dimension_numbers=_NHWC,
                                    precision=precision)
  return _row_taps_conv(lhs, rhs, precision, mixed)


def _row_taps(lhs, kw, out_w):
  """(B, H, W, I) -> (B, H, W', kw*I): the kw column taps side by side."""
  return jnp.concatenate([lhs[:, :, j:j + out_w] for j in range(kw)], axis=-1)


def _row_taps_conv(lhs, rhs, precision, mixed):
  """`_conv_valid` as kh matmuls, one per kernel row, over the kw column taps
  side by side in channels (5 slices for 5x5, not im2col's 25). XLA:CPU's
  bf16 convolutions accumulating in f32 are slower than its f32 ones; its
  bf16 matmuls are faster."""
  kh, kw, in_features, out_features = rhs.shape
  out_h, out_w = lhs.shape[1] - kh + 1, lhs.shape[2] - kw + 1
  (lhs,) = mixed.cast(lhs)  # before the taps: half the bytes to move
  taps = _row_taps(lhs, kw, out_w)
  (kernel,) = mixed.cast(rhs.reshape(kh, kw * in_features, out_features))
  out = None
  for i in range(kh):
    row = jnp.matmul(taps[:, i:i + out_h], kernel[i], precision=precision,
                     **mixed.accumulate)
    out = row if out is None else out + row
  return out


def _conv_valid_fwd(lhs, rhs, precision, operand_dtype):
  return _conv_valid(lhs, rhs, precision, operand_dtype), (lhs, rhs)


def _conv_valid_bwd(precision, operand_dtype, residuals, grad):
  lhs, rhs = residuals
  kh, kw = rhs.shape[:2]
  mixed = _mixed(lhs.dtype, operand_dtype)
  # Input gradient: a forward 'full' conv with the flipped, transposed kernel.
  flipped = jnp.swapaxes(jnp.flip(rhs, (0, 1)), 2, 3)
  full = ((kh - 1, kh - 1), (kw - 1, kw - 1))
  if mixed.operand_dtype is None:
    grad_lhs = lax.conv_general_dilated(grad, flipped, (1, 1), full,
                                        dimension_numbers=_NHWC,
                                        precision=precision)
  else:
    (narrow_grad,) = mixed.cast(grad)
    grad_lhs = _row_taps_conv(
        jnp.pad(narrow_grad, ((0, 0),) + full + ((0, 0),)), flipped,
        precision, mixed).astype(lhs.dtype)
  out_h, out_w = grad.shape[1:3]
  grad_2d = grad.reshape(-1, grad.shape[-1])
  contract_rows = (((0,), (0,)), ((), ()))
  if mixed.operand_dtype is None:
    # Weight gradient, one matmul per tap: the shifted input (B*H'*W', I)
    # transposed times grad (B*H'*W', O). (Stacking all taps into one patch
    # matrix first cost XLA:CPU a transposing copy as slow as the matmul.)
    grad_rhs = jnp.stack([
        mixed.dot_general(
            lhs[:, i:i + out_h, j:j + out_w].reshape(-1, lhs.shape[-1]),
            grad_2d, contract_rows, precision)
        for i in range(kh) for j in range(kw)])
  else:
    # One matmul per kernel row over the column taps, as the forward.
    taps = _row_taps(*mixed.cast(lhs), kw, out_w)
    grad_rhs = jnp.stack([
        mixed.dot_general(taps[:, i:i + out_h].reshape(-1, taps.shape[-1]),
                          grad_2d, contract_rows, precision)
        for i in range(kh)])
  return grad_lhs, grad_rhs.reshape(rhs.shape).astype(rhs.dtype)


_conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _space_to_depth_conv(lhs, rhs, strides, padding, precision, mixed):
  """A strided conv as space-to-depth then a stride-1 conv (lax's: 'resample').

  With a = s*q + r, y[n] = sum_a x_pad[s*n + a] k[a] = sum_q z[n + q, r] k[s*q + r],
  where z[m, r] = x_pad[s*m + r] puts the s phases into channels.
  """
  (sh, sw), (kh, kw) = strides, rhs.shape[:2]
  batch, height, width, channels = lhs.shape
  out_h = (height + sum(padding[0]) - kh) // sh + 1
  out_w = (width + sum(padding[1]) - kw) // sw + 1
  qh, qw = math.ceil(kh / sh), math.ceil(kw / sw)
  # Pad (or crop) to exactly s * (out + q - 1) rows and columns.
  rows, cols = sh * (out_h + qh - 1), sw * (out_w + qw - 1)
  (top, _), (left, _) = padding
  lhs = jnp.pad(lhs, ((0, 0), (max(top, 0), max(rows - height - top, 0)),
                      (max(left, 0), max(cols - width - left, 0)), (0, 0)))
  lhs = lhs[:, max(-top, 0):, max(-left, 0):]
  lhs = lhs[:, :rows, :cols].reshape(batch, rows // sh, sh, cols // sw, sw,
                                     channels)
  lhs = lhs.transpose(0, 1, 3, 2, 4, 5).reshape(
      batch, rows // sh, cols // sw, sh * sw * channels)
  kernel = jnp.pad(rhs, ((0, qh * sh - kh), (0, qw * sw - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(qh, sh, qw, sw, *rhs.shape[2:])
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(
      qh, qw, sh * sw * rhs.shape[2], rhs.shape[3])
  return lax.conv_general_dilated(*mixed.cast(lhs, kernel), (1, 1), 'VALID',
                                  dimension_numbers=_NHWC, precision=precision,
                                  **mixed.accumulate)


def _subpixel_conv(lhs, rhs, dilation, padding, precision, impl,
                   operand_dtype):
  """An input-dilated (transposed) stride-1 conv as sub-pixel convolution.

  With u the s-dilated input, y[p] = sum_a u[p + a - lo] k[a]; for the output
  phase p = s*n + r only taps with (r + a - lo) % s == 0 hit a sample,
  x[n + q] with q = (r + a - lo) / s. One stride-1 conv computes all s*s
  phases as channels; depth-to-space interleaves them.
  """
  batch, height, width, _ = lhs.shape
  kernel_size, in_features, out_features = rhs.shape[:2], rhs.shape[2], rhs.shape[3]
  out_size = [(n - 1) * s + 1 + lo + hi - k + 1 for n, s, (lo, hi), k in
              zip((height, width), dilation, padding, kernel_size)]
  pads, tap_index = [], []
  for axis in range(2):
    k, s, (lo, _) = kernel_size[axis], dilation[axis], padding[axis]
    taps = [[((r + a - lo) // s, a) for a in range(k) if (r + a - lo) % s == 0]
            for r in range(s)]
    q_all = [q for phase in taps for q, _ in phase] or [0]
    q_min, q_max = min(q_all), max(q_all)
    # index[q - q_min, r] = a, or k (a zero tap).
    index = np.full((q_max - q_min + 1, s), k)
    for r, phase in enumerate(taps):
      for q, a in phase:
        index[q - q_min, r] = a
    tap_index.append(index)
    steps = -(-out_size[axis] // s)
    size = (height, width)[axis]
    pads.append((-q_min, steps - 1 + q_max - (size - 1)))
  padded = jnp.pad(rhs, ((0, 1), (0, 1), (0, 0), (0, 0)))
  kernel = padded[tap_index[0][:, None, :, None], tap_index[1][None, :, None, :]]
  # (qh, qw, sh, sw, I, O) -> (qh, qw, I, sh*sw*O)
  sh, sw = dilation
  kernel = kernel.transpose(0, 1, 4, 2, 3, 5).reshape(
      kernel.shape[0], kernel.shape[1], in_features, sh * sw * out_features)
  phases = conv(lhs, kernel, (1, 1), pads, dimension_numbers=_NHWC,
                precision=precision, impl=impl, operand_dtype=operand_dtype)
  steps_h, steps_w = phases.shape[1:3]
  y = phases.reshape(batch, steps_h, steps_w, sh, sw, out_features)
  y = y.transpose(0, 1, 3, 2, 4, 5).reshape(batch, steps_h * sh, steps_w * sw,
                                            out_features)
  return y[:, :out_size[0], :out_size[1]]


def broadcast_leading(value, shape):
  """`value` (1, ...) broadcast to `shape` (B, ...): a parameter shared by
  the B samples of a batch.

  Same values as `jnp.broadcast_to`. Its gradient, the sum over the B
  samples, is on CPU B - 1 adds of slices, one fused loop: XLA:CPU sends a
  reduction over a leading axis to YNNPACK, which took 3.4-5.8 ms for the
  LayerNorms' (8, 16, 16, 192) parameter gradients, about 1.4 s of a
  `configs/mmnist.py` training step (docs/speed.md).
  """
  return _broadcast_leading(value, tuple(shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _broadcast_leading(value, shape):
  return jnp.broadcast_to(value, shape)


def _broadcast_leading_fwd(value, shape):
  return _broadcast_leading(value, shape), None


def _broadcast_leading_bwd(shape, _, grad):
  if jax.default_backend() != 'cpu':
    return (jnp.sum(grad, axis=0, keepdims=True),)
  total = grad[:1]
  for i in range(1, shape[0]):
    total = total + grad[i:i + 1]
  return (total,)


_broadcast_leading.defvjp(_broadcast_leading_fwd, _broadcast_leading_bwd)
