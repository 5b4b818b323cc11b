"""The model's frame-size rule, checked on configs and on frames (no JAX needed)."""


def check_frame_size(name, height, width, patch_size, num_downsample):
  """Raises ValueError unless patch_size * 2**num_downsample divides both sizes.

  The model patches frames by patch_size and halves them num_downsample times
  (docs/model.md), so both sizes must be multiples of that factor.
  `name` says where the sizes came from in the message (e.g.
  'config.data.image_size').
  """
  factor = patch_size * 2**num_downsample
  if height % factor or width % factor:
    raise ValueError(
        f'{name} {height}x{width} is not divisible by patch_size * '
        f'2**num_downsample = {patch_size} * 2**{num_downsample} = {factor}; '
        f'resize or crop the frames to multiples of {factor}, or change '
        f'config.model.patch_size / config.model.num_downsample.')
