"""Tests for stau_jax.models.convlstm: OpenSTL's model, converted, predicts the same frames."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from stau_jax import convert_torch
from stau_jax import models
from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('convlstm'),
                         ids=os.path.basename)
def test_converted_openstl_model_predicts_its_frames(path):
  openstl_vectors.check(path)


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'net_param': sd},
    lambda sd: {'state_dict': {'model.' + k: v for k, v in sd.items()},
                'epoch': 3},
], ids=['plain', 'net_param', 'lightning'])
def test_every_checkpoint_layout_converts_to_the_same_parameters(wrap):
  path = openstl_vectors.paths('convlstm')[0]
  config, state_dict, frames, _, _ = openstl_vectors.load(path)
  params = convert_torch.convert_state_dict(
      convert_torch.unwrap_state_dict(wrap(state_dict)), config)
  expected = convert_torch.convert_state_dict(state_dict, config)
  np.testing.assert_array_equal(params['unroll']['cell_0']['conv_x']['conv']['kernel'],
                                expected['unroll']['cell_0']['conv_x']['conv']['kernel'])
  model = models.create_model(config)
  np.testing.assert_array_equal(
      model.apply({'params': params}, jnp.asarray(frames)),
      model.apply({'params': expected}, jnp.asarray(frames)))


def test_unused_reference_layers_are_skipped_and_unknown_keys_refused():
  config, state_dict, _, _, _ = openstl_vectors.load(
      openstl_vectors.paths('convlstm')[0])
  assert any('.conv_o.' in key for key in state_dict)  # OpenSTL's dead conv
  convert_torch.convert_state_dict(state_dict, config)
  with pytest.raises(ValueError, match='does not'):
    convert_torch.convert_state_dict(
        dict(state_dict, **{'cell_list.0.conv_z.weight': np.zeros(3)}), config)
  missing = dict(state_dict)
  del missing['cell_list.1.conv_h.0.weight']
  with pytest.raises(ValueError, match="missing key 'cell_list.1.conv_h.0.weight'"):
    convert_torch.convert_state_dict(missing, config)
