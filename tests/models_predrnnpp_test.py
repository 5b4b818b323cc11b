"""Tests for stau_jax.models.predrnnpp: OpenSTL's model, converted, predicts the same frames."""
import os

import jax
import jax.numpy as jnp
import numpy as np
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
    models.create_model(config)
