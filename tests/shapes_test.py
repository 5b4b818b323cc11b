"""Tests for stau_jax.shapes."""
import pytest

from stau_jax import shapes


@pytest.mark.parametrize('height, width, patch_size, num_downsample', [
    (64, 64, 1, 2), (64, 64, 4, 4), (128, 160, 2, 2), (5, 7, 1, 0)])
def test_sizes_the_model_can_halve_and_patch_pass(height, width, patch_size,
                                                  num_downsample):
  shapes.check_frame_size('frames', height, width, patch_size, num_downsample)


@pytest.mark.parametrize('height, width, patch_size, num_downsample, factor', [
    (64, 62, 1, 2, 4), (60, 64, 4, 2, 16), (12, 12, 1, 3, 8)])
def test_other_sizes_are_refused_with_the_factor(height, width, patch_size,
                                                 num_downsample, factor):
  with pytest.raises(
      ValueError,
      match=rf'^frames {height}x{width} is not divisible by patch_size \* '
            rf'2\*\*num_downsample = {patch_size} \* 2\*\*{num_downsample} = '
            rf'{factor}; resize or crop the frames to multiples of {factor}'):
    shapes.check_frame_size('frames', height, width, patch_size,
                            num_downsample)
