"""Reads the OpenSTL test vectors (tests/vectors/make_openstl_vectors.py)."""
import glob
import json
import os

import jax.numpy as jnp
import numpy as np

from configs import mmnist
from stau_jax import convert_torch
from stau_jax import models

DIRECTORY = os.path.join(os.path.dirname(__file__), 'vectors', 'openstl')


def paths(unit):
  """The vector files of `unit` (at least one, or the test setup is wrong)."""
  found = sorted(glob.glob(os.path.join(DIRECTORY, f'{unit}_*.npz')))
  assert found, f'no OpenSTL vectors for {unit} in {DIRECTORY}'
  return found


def load(path):
  """Returns (config, state_dict, frames, sampling_mask, predictions)."""
  data = np.load(path)
  case = json.loads(str(data['config_json']))
  config = mmnist.get_config()
  config.model.update(
      cell=case['unit'], num_layers=case['layers'], num_hidden=case['hidden'],
      filter_size=case['filter'], num_downsample=0, patch_size=case['patch'],
      frontend='patch', layer_norm=bool(case['layer_norm']))
  if 'decouple_beta' in case:
    config.model.decouple_beta = case['decouple_beta']
  config.data.update(image_size=(case['height'], case['width']),
                     channels=case['channels'], input_length=case['input'],
                     total_length=case['total'])
  return (config,) + reference_arrays(data)


def reference_arrays(data):
  """(state_dict, frames, sampling_mask, predictions) of a loaded vector
  file: the layout every file in tests/vectors holds (its README)."""
  prefix = 'state_dict/'
  state_dict = {k[len(prefix):]: data[k] for k in data.files
                if k.startswith(prefix)}
  return (state_dict, data['frames'], data['sampling_mask'],
          data['predictions'])


def check(path, atol=1e-4):
  """Converts the vector's OpenSTL weights and compares the predictions
  (also while recording) and, where the vector has one, the auxiliary
  training loss."""
  config, state_dict, frames, mask, expected = load(path)
  params = convert_torch.convert_state_dict(state_dict, config)
  model = models.create_model(config)
  predictions, auxiliary_loss = models.predict_with_auxiliary_loss(
      model, params, jnp.asarray(frames), jnp.asarray(mask))
  np.testing.assert_allclose(predictions, expected, atol=atol)
  recorded, _ = models.predict_with_records(model, params, jnp.asarray(frames),
                                            jnp.asarray(mask))
  np.testing.assert_allclose(recorded, expected, atol=atol)
  data = np.load(path)
  if 'auxiliary_loss' in data.files:
    np.testing.assert_allclose(auxiliary_loss, data['auxiliary_loss'],
                               rtol=1e-4)
