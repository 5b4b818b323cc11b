"""Tests for stau_jax.models.predrnnpp: OpenSTL's model, converted, predicts the same frames."""
import os

import pytest

from configs import tiny
from stau_jax import convert_torch
from stau_jax import models
from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('predrnnpp'),
                         ids=os.path.basename)
def test_converted_openstl_model_predicts_its_frames(path):
  openstl_vectors.check(path)


def test_one_layer_is_a_clear_error():
  config = tiny.get_config()
  config.model.update(cell='predrnnpp', num_layers=1)
  with pytest.raises(ValueError, match='predrnnpp.*num_layers >= 2'):
    models.validate_model_config(config)


def test_openstl_ghu_layer_norm_of_the_wrong_size_is_a_clear_error():
  # OpenSTL's own PredRNN++ with layer_norm=1 holds LayerNorm([C, h, w])
  # after the GHU's 2C-channel convs (and fails in its forward pass).
  path, = [p for p in openstl_vectors.paths('predrnnpp') if '_ln_' in p]
  config, state_dict, *_ = openstl_vectors.load(path)
  key = 'gradient_highway.z_concat.1.weight'
  state_dict[key] = state_dict[key][:config.model.num_hidden]
  with pytest.raises(ValueError, match=f"{key}' has shape"):
    convert_torch.convert_state_dict(state_dict, config)
