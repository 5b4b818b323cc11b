"""Front-ends: how frames enter the bottom layer and leave the top one.

'stau' (the paper's Table 2): a 1x1 conv to C channels and `num_downsample`
stride-2 3x3 convs in, as many stride-2 transposed convs and a 1x1 conv out.
'patch' (the PredRNN / OpenSTL layout): patched frames go straight into the
bottom layer; a bias-free 1x1 conv reads the top layer out.

Both are a pair (encoder, decoder): `encoder(frame)` returns a list of
feature maps whose last one feeds the bottom layer, `decoder(top, encoded)`
maps the top layer's output (and, for `recall`, those features) to a frame.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from stau_jax import ops
from stau_jax.models import unit

FRONTENDS = ('stau', 'patch')


class Encoder(nn.Module):
  """1x1 conv to C channels, then `num_downsample` stride-2 3x3 convs.

  Returns every output (full resolution first): `recall` adds them back in
  the decoder. With `recompute_full_resolution` (and a stride-2 conv), the
  backward pass recomputes the full-resolution features (B, H, W, C) from
  the frame, a 1x1 conv from its few channels, instead of keeping them and
  their LeakyReLU's mask for every step (Moving MNIST, batch 8: 190 MB less
  per float32 training step); the same values and gradients.
  """
  num_hidden: int
  num_downsample: int
  conv: Callable[..., nn.Module]
  recompute_full_resolution: bool = False

  @nn.compact
  def __call__(self, frame):
    if self.recompute_full_resolution and self.num_downsample:
      # The first stride-2 conv is inside the recomputed part, so it is
      # what reads the full-resolution features; its output is kept.
      full_resolution, first_down = nn.remat(_embed_and_first_down)(
          self, frame)
      features = [full_resolution, nn.leaky_relu(first_down, 0.2)]
    else:
      features = [_embed(self, frame)]
    for i in range(len(features) - 1, self.num_downsample):
      features.append(nn.leaky_relu(_down(self, i, features[-1]), 0.2))
    return features


def _embed(encoder, frame):
  """The full-resolution features: (B, H, W, c) -> (B, H, W, C)."""
  return nn.leaky_relu(
      encoder.conv(encoder.num_hidden, (1, 1), name='embed')(frame), 0.2)


def _down(encoder, i, x):
  """Stride-2 conv `i`, before its LeakyReLU: (B, h, w, C) -> (B, h/2, w/2, C)."""
  return encoder.conv(encoder.num_hidden, (3, 3), strides=(2, 2),
                      padding=((1, 1), (1, 1)), name=f'down_{i}')(x)


def _embed_and_first_down(encoder, frame):
  """(full-resolution features, the first stride-2 conv's output)."""
  features = _embed(encoder, frame)
  return features, _down(encoder, 0, features)


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose(transpose_kernel=True)` computed by `ops.conv_transpose`.

  Same parameters as flax's: 'kernel' (kh, kw, features, in_features), as
  PyTorch's ConvTranspose2d weight up to axis order, and 'bias' (features,).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int]
  padding: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  operand_dtype: Any = None

  @nn.compact
  def __call__(self, x, then=None):
    """(B, h, w, in_features) -> (B, h', w', features).

    With `then` = (matrix (features, F), offset (F,)): (B, h', w', F), the
    result times matrix plus offset (a 1x1 conv after it), as one transposed
    conv whose kernel and bias are composed with them: F output channels
    computed instead of `features`.
    """
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        self.kernel_size + (self.features, x.shape[-1]))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    if then is not None:
      matrix, offset = then
      kernel = jnp.einsum('hwci,co->hwoi', kernel, matrix)
      bias = bias @ matrix + offset
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = ops.conv_transpose(x, kernel, self.strides, self.padding,
                           impl=self.conv_impl,
                           operand_dtype=self.operand_dtype)
    return y + bias


class Decoder(nn.Module):
  """`num_downsample` stride-2 transposed 3x3 convs, then a 1x1 conv to frames.

  Each transposed conv exactly doubles h and w (PyTorch's padding 1,
  output_padding 1); LeakyReLU(0.2) after all but the last; with `recall`,
  the encoder output of the same resolution is added after each.
  Nothing nonlinear follows the last transposed conv, so the 1x1 readout is
  composed into it (`ConvTranspose(then=...)`): it computes frame_channels
  outputs instead of num_hidden at full resolution (the same parameters and,
  to float rounding, results; on Moving MNIST 64x fewer multiply-adds in the
  largest conv and no (B, H, W, num_hidden) activation kept for backward).
  """
  num_hidden: int
  num_downsample: int
  frame_channels: int
  recall: bool
  conv: Callable[..., nn.Module]
  conv_transpose: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, top, encoded):
    x = top
    n = self.num_downsample
    if n == 0:
      return self.conv(self.frame_channels, (1, 1), name='readout')(x)
    up = lambda i: self.conv_transpose(  # noqa: E731
        self.num_hidden, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
        name=f'up_{i}')
    for i in range(n - 1):
      x = nn.leaky_relu(up(i)(x), 0.2)
      if self.recall:
        x = x + encoded[n - 1 - i]
    readout, offset = unit.ConvParams(self.frame_channels, 1, self.num_hidden,
                                      use_bias=True, name='readout')()
    frame = up(n - 1)(x, then=(readout[0, 0], offset))
    if self.recall:
      frame = frame + self.conv(
          self.frame_channels, (1, 1), use_bias=False, parent=None).apply(
              {'params': {'kernel': readout}}, encoded[0])
    return frame


class PatchEncoder(nn.Module):
  """The 'patch' front-end's encoder: the patched frame itself (no parameters)."""

  def __call__(self, frame):
    return [frame]


class PatchDecoder(nn.Module):
  """The 'patch' front-end's readout: a bias-free 1x1 conv to frame patches."""
  frame_channels: int
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, top, encoded):
    del encoded
    return self.conv(self.frame_channels, (1, 1), use_bias=False,
                     name='readout')(top)


def build(model, frame_channels, conv, conv_transpose,
          recompute_full_resolution=False):
  """(encoder, decoder, channels the bottom layer receives) for config.model.

  Args:
    model: config.model (its `frontend`, one of FRONTENDS, `num_hidden`,
      `num_downsample`, `recall`).
    frame_channels: channels of a patched frame, p*p*c.
    conv, conv_transpose: the predictor's convolution factories.
    recompute_full_resolution: the 'stau' encoder's backward pass recomputes
      its full-resolution features (`Encoder`).
  """
  if model.frontend == 'patch':
    return (PatchEncoder,
            functools.partial(PatchDecoder, frame_channels, conv),
            frame_channels)
  encoder = functools.partial(Encoder, model.num_hidden, model.num_downsample,
                              conv, recompute_full_resolution)
  decoder = functools.partial(Decoder, model.num_hidden, model.num_downsample,
                              frame_channels, model.recall, conv,
                              conv_transpose)
  return encoder, decoder, model.num_hidden
