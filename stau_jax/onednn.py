"""2D convolutions through oneDNN on the CPU (`conv_impl='onednn'`).

XLA:CPU runs this model's 5x5 convolutions and their gradients at about 100
GFLOP/s on a 2-core AVX-512 machine; oneDNN, the library PyTorch uses, runs
each of the three at about 250 (float32) and 420-500 (bfloat16 operands),
also when called from inside a jitted step (docs/speed.md).
`pip install -e .` builds the XLA FFI handler `stau_jax/csrc/onednn_conv.cc`
against the `onednn-cpu-gomp` wheel; where it could not be built (no C++ compiler) or
oneDNN does not load, `available()` is False and `conv_impl='auto'` keeps
XLA's own convolutions ('fast').

Convolutions under 10 million multiply-adds run on the calling thread
alone (waking OpenMP's other threads would cost more than they save).

`conv(lhs, rhs, strides, padding, operand_dtype)` is one NHWC x HWIO
convolution with explicit non-negative padding; its gradients are oneDNN's
backward-data and backward-weights primitives (custom VJP). Operands are
float32 or bfloat16; results and gradients are float32, cast to the
inputs' dtypes.
"""
import ctypes
import functools
import importlib
import importlib.metadata
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

TARGET = 'stau_jax_onednn_conv'
PACK_TARGET = 'stau_jax_onednn_pack'
# What oneDNN accepts as operands here.
OPERAND_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
_FORWARD, _BACKWARD_DATA, _BACKWARD_WEIGHTS = 0, 1, 2
_HOW_TO_BUILD = (
    "reinstall with a C++17 compiler present (pip install -e . builds "
    "stau_jax/csrc/onednn_conv.cc against the onednn-cpu-gomp wheel), or "
    "set config.model.conv_impl='fast' for XLA's own convolutions")


def _load_onednn_library():
  """Loads libdnnl from the onednn-cpu-gomp wheel (global symbols), so the
  extension's dependency on it resolves wherever the wheel put it."""
  files = importlib.metadata.files('onednn-cpu-gomp') or ()
  for file in files:
    if file.name.startswith('libdnnl.so.') and file.name.count('.') == 2:
      ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
      return
  raise OSError('the onednn-cpu-gomp wheel has no libdnnl.so.N')


@functools.cache
def _status():
  """(True, '') once the FFI target is registered, else (False, why)."""
  if os.environ.get('STAU_JAX_ONEDNN', '1') == '0':
    return False, 'STAU_JAX_ONEDNN=0 turns it off'
  try:
    _load_onednn_library()
    extension = importlib.import_module('stau_jax._onednn_conv')
  except (ImportError, OSError, importlib.metadata.PackageNotFoundError) as e:
    return False, f'the oneDNN extension did not load ({e})'
  jax.ffi.register_ffi_target(TARGET, extension.handler(), platform='cpu')
  jax.ffi.register_ffi_target(PACK_TARGET, extension.pack_handler(),
                              platform='cpu')
  return True, ''


def available():
  """Whether oneDNN convolutions can run here (built, loaded, registered)."""
  return _status()[0]


def check_available():
  """Raises ValueError saying why oneDNN convolutions cannot run, and how
  to fix it, unless `available()`."""
  ok, why = _status()
  if not ok:
    raise ValueError(f"config.model.conv_impl='onednn' cannot run: {why}; "
                     f'{_HOW_TO_BUILD}.')


def supports(lhs_dtype, operand_dtype):
  """Whether `conv` computes with these dtypes (operand_dtype None: lhs's)."""
  operand = jnp.dtype(operand_dtype or lhs_dtype)
  return operand in OPERAND_DTYPES and jnp.dtype(lhs_dtype) in OPERAND_DTYPES


def _geometry(strides, padding, groups):
  (top, bottom), (left, right) = padding
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(top), pad_bottom=np.int64(bottom),
              pad_left=np.int64(left), pad_right=np.int64(right),
              groups=np.int64(groups))


def _call(kind, a, b, out_shape, strides, padding, groups, packed=False):
  check_available()  # registers the target on first use
  return jax.ffi.ffi_call(
      TARGET, jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method='sequential')(
          a, b, kind=np.int64(kind), packed=np.int64(packed),
          **_geometry(strides, padding, groups))


def _packed_kernel(lhs_shape, rhs, out_shape, strides, padding, groups):
  """rhs in the layout oneDNN's forward primitive reads, as an array of
  rhs's shape and dtype (for `_call(..., packed=True)`), or None where that
  layout has another size. One call on the kernel alone: XLA hoists it out
  of a loop whose steps share the kernel, instead of every step's call
  reordering it again."""
  check_available()  # registers the targets on first use
  (batch, in_h, in_w, in_c), (kh, kw, _, out_c) = lhs_shape, rhs.shape
  (top, bottom), (left, right) = padding
  extension = importlib.import_module('stau_jax._onednn_conv')
  if not extension.packable(
      batch, in_h, in_w, in_c, out_shape[1], out_shape[2], out_c, kh, kw,
      strides[0], strides[1], top, bottom, left, right, groups,
      int(rhs.dtype == jnp.bfloat16)):
    return None
  return jax.ffi.ffi_call(
      PACK_TARGET, jax.ShapeDtypeStruct(rhs.shape, rhs.dtype),
      vmap_method='sequential')(
          rhs, batch=np.int64(batch), in_h=np.int64(in_h),
          in_w=np.int64(in_w), out_h=np.int64(out_shape[1]),
          out_w=np.int64(out_shape[2]), **_geometry(strides, padding, groups))


def call_flops(attributes, a_shape, b_shape, out_shape):
  """Multiply-add FLOPs of one oneDNN call: 2 per product, from its
  attributes (name -> value) and its operands' and result's shapes."""
  kind = int(dict(attributes)['kind'])
  dst = out_shape if kind == _FORWARD else (
      a_shape if kind == _BACKWARD_DATA else b_shape)
  weights = out_shape if kind == _BACKWARD_WEIGHTS else b_shape
  return 2 * math.prod(dst) * math.prod(weights[:3])


def output_shape(lhs_shape, rhs_shape, strides, padding):
  """(B, H', W', O) of the convolution of (B, H, W, I) with (kh, kw, I, O)."""
  (batch, height, width, _), (kh, kw, _, features) = lhs_shape, rhs_shape
  out_h = (height + sum(padding[0]) - kh) // strides[0] + 1
  out_w = (width + sum(padding[1]) - kw) // strides[1] + 1
  return (batch, out_h, out_w, features)


def conv(lhs, rhs, strides, padding, operand_dtype=None, groups=1):
  """A 2D convolution by oneDNN.

  Args:
    lhs: (B, H, W, I) input, float32 or bfloat16.
    rhs: (kh, kw, I / groups, O) kernel.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), each >= 0.
    operand_dtype: what the operands are cast to (float32 or bfloat16);
      None: lhs's dtype. Accumulation is float32, and so are the gradients
      when lhs and rhs are.
    groups: feature groups, as lax's feature_group_count: group g convolves
      input channels [g I/groups, (g+1) I/groups) into outputs
      [g O/groups, (g+1) O/groups), in one call.

  Returns:
    (B, H', W', O) in lhs's dtype.
  """
  return _conv(lhs, rhs, tuple(strides), tuple(map(tuple, padding)),
               jnp.dtype(operand_dtype or lhs.dtype), groups,
               jnp.dtype(rhs.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, padding, operand, groups, rhs_dtype):
  return _conv_fwd(lhs, rhs, strides, padding, operand, groups, rhs_dtype)[0]


def _conv_fwd(lhs, rhs, strides, padding, operand, groups, rhs_dtype):
  """The convolution, and its operands cast for the backward pass to keep
  (with bfloat16 operands half the bytes of float32 inputs)."""
  del rhs_dtype
  operands = lhs.astype(operand), rhs.astype(operand)
  out_shape = output_shape(lhs.shape, rhs.shape, strides, padding)
  packed = _packed_kernel(lhs.shape, operands[1], out_shape, strides, padding,
                          groups)
  out = _call(_FORWARD, operands[0],
              operands[1] if packed is None else packed, out_shape, strides,
              padding, groups, packed=packed is not None)
  return out.astype(lhs.dtype), operands


def _conv_bwd(strides, padding, operand, groups, rhs_dtype, residuals, grad):
  lhs, rhs = residuals
  lhs_dtype = grad.dtype  # the result's dtype is lhs's
  grad = grad.astype(operand)
  grad_lhs = _call(_BACKWARD_DATA, grad, rhs, lhs.shape, strides, padding,
                   groups)
  grad_rhs = _call(_BACKWARD_WEIGHTS, lhs, grad, rhs.shape, strides, padding,
                   groups)
  return grad_lhs.astype(lhs_dtype), grad_rhs.astype(rhs_dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
