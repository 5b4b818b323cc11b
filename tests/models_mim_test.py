"""Tests for stau_jax.models.mim: OpenSTL's model, converted, predicts the same frames."""
import os

import pytest

from tests import openstl_vectors


@pytest.mark.parametrize('path', openstl_vectors.paths('mim'),
                         ids=os.path.basename)
def test_converted_openstl_model_predicts_its_frames(path):
  openstl_vectors.check(path)
