"""Generate test vectors for stau_jax's comparison units from OpenSTL's models.

For each case below this script builds OpenSTL's `<Unit>_Model` (from a
checkout of chengtan9907/OpenSTL) with random weights, moves every LayerNorm
weight and bias off 1 and 0, scales the readout conv_last by 10, feeds random patched frames and a random 0/1
scheduled-sampling mask through it and stores the inputs, the un-patched
outputs, the config and the state_dict in one .npz per case under
tests/vectors/openstl/. A case with `decouple_beta` (PredRNN-v2) runs with
`return_loss=True` and also stores the loss minus the MSE, the weighted
decoupling loss, as `auxiliary_loss`; a case with `reverse` 1 uses reverse
scheduled sampling (a mask over the T-2 inputs after the first).

Usage (from the repository root, in an environment with torch and numpy):
    python tests/vectors/make_openstl_vectors.py PATH/TO/OpenSTL [UNIT ...]

Only the unit files are loaded from the checkout (openstl/modules/
<unit>_modules.py and openstl/models/<unit>_model.py); OpenSTL's package
__init__ files, which import timm and more, are never run. None of its code
is in this repository. This script does not depend on stau_jax.
"""
import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch

B = 2
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'openstl')

# unit -> (OpenSTL file stem, model class, cell classes its model imports)
MODELS = {
    'convlstm': ('convlstm', 'ConvLSTM_Model', ('ConvLSTMCell',)),
    'predrnn': ('predrnn', 'PredRNN_Model', ('SpatioTemporalLSTMCell',)),
    'predrnnv2': ('predrnnv2', 'PredRNNv2_Model',
                  ('SpatioTemporalLSTMCellv2',)),
}

# One dict per vector: the unit, OpenSTL's layer_norm, frame channels, patch
# size, layers, hidden channels, filter size, frame size, total and input
# lengths (and for PredRNN-v2 decouple_beta and reverse scheduled sampling).
# Small and non-square on purpose.
CASES = [
    dict(name='convlstm_ln_gray_p4', unit='convlstm', layer_norm=1, channels=1,
         patch=4, layers=3, hidden=8, filter=3, height=16, width=24, total=7,
         input=3),
    dict(name='convlstm_rgb_p2', unit='convlstm', layer_norm=0, channels=3,
         patch=2, layers=2, hidden=6, filter=5, height=8, width=12, total=6,
         input=2),
    dict(name='predrnn_ln_rgb_p2', unit='predrnn', layer_norm=1, channels=3,
         patch=2, layers=3, hidden=6, filter=3, height=8, width=12, total=7,
         input=3),
    dict(name='predrnn_gray_p4', unit='predrnn', layer_norm=0, channels=1,
         patch=4, layers=2, hidden=8, filter=5, height=16, width=24, total=6,
         input=3),
    dict(name='predrnnv2_ln_rgb_p2_reverse', unit='predrnnv2', layer_norm=1,
         channels=3, patch=2, layers=3, hidden=6, filter=3, height=8,
         width=12, total=7, input=3, decouple_beta=0.1, reverse=1),
    dict(name='predrnnv2_gray_p4', unit='predrnnv2', layer_norm=0,
         channels=1, patch=4, layers=2, hidden=8, filter=5, height=16,
         width=24, total=6, input=3, decouple_beta=0.5, reverse=0),
]


def _load(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_model_class(checkout, unit):
  """OpenSTL's model class for `unit`, importing only its two files."""
  stem, model_class, cells = MODELS[unit]
  root = os.path.join(checkout, 'openstl')
  modules = _load(os.path.join(root, 'modules', f'{stem}_modules.py'),
                  f'_openstl_{stem}_modules')
  package = types.ModuleType('openstl.modules')
  for cell in cells:
    setattr(package, cell, getattr(modules, cell))
  sys.modules.setdefault('openstl', types.ModuleType('openstl'))
  sys.modules['openstl.modules'] = package
  model = _load(os.path.join(root, 'models', f'{stem}_model.py'),
                f'_openstl_{stem}_model')
  return getattr(model, model_class)


def reshape_patch(frames, patch):
  """(B, T, H, W, c) -> (B, T, H/p, W/p, p*p*c), as OpenSTL's reshape_patch."""
  b, t, h, w, c = frames.shape
  x = frames.reshape(b, t, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(
      b, t, h // patch, w // patch, patch * patch * c)


def unpatch(patches, patch, channels):
  b, t, h, w, _ = patches.shape
  x = patches.reshape(b, t, h, w, patch, patch, channels)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * patch, w * patch,
                                                  channels)


def make_case(checkout, case, seed):
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  configs = types.SimpleNamespace(
      in_shape=(case['total'], case['channels'], case['height'],
                case['width']),
      patch_size=case['patch'], filter_size=case['filter'], stride=1,
      layer_norm=case['layer_norm'], pre_seq_length=case['input'],
      aft_seq_length=case['total'] - case['input'],
      total_length=case['total'],
      reverse_scheduled_sampling=case.get('reverse', 0),
      decouple_beta=case.get('decouple_beta', 0.0))
  model_class = load_model_class(checkout, case['unit'])
  model = model_class(case['layers'], [case['hidden']] * case['layers'],
                      configs).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.add_(0.3 * torch.randn_like(module.weight))
        module.bias.add_(0.3 * torch.randn_like(module.bias))
    # Larger outputs make the 1e-4 comparison in the tests a tighter check.
    model.conv_last.weight.mul_(10)
  frames = rng.uniform(size=(B, case['total'], case['height'], case['width'],
                             case['channels'])).astype(np.float32)
  patches = reshape_patch(frames, case['patch'])
  num_masked = (case['total'] - 2 if case.get('reverse') else
                case['total'] - case['input'] - 1)
  mask = rng.integers(0, 2, size=(B, num_masked, 1, 1, 1)).astype(np.float32)
  mask = np.broadcast_to(mask, (B, num_masked) + patches.shape[2:]).copy()
  with_loss = 'decouple_beta' in case
  with torch.no_grad():
    outputs, loss = model(torch.from_numpy(patches), torch.from_numpy(mask),
                          return_loss=with_loss)
  predictions = unpatch(outputs.numpy(), case['patch'], case['channels'])
  arrays = {'frames': frames, 'sampling_mask': mask,
            'predictions': predictions.astype(np.float32),
            'config_json': np.array(json.dumps(case))}
  if with_loss:
    mse = torch.nn.functional.mse_loss(outputs,
                                       torch.from_numpy(patches)[:, 1:])
    arrays['auxiliary_loss'] = np.float32(loss.double() - mse.double())
  for key, value in model.state_dict().items():
    arrays['state_dict/' + key] = value.numpy()
  return arrays


def main(argv):
  checkout, units = argv[1], set(argv[2:]) or set(MODELS)
  os.makedirs(OUT_DIR, exist_ok=True)
  for seed, case in enumerate(CASES):
    if case['unit'] not in units:
      continue
    path = os.path.join(OUT_DIR, case['name'] + '.npz')
    np.savez_compressed(path, **make_case(checkout, case, seed))
    print('wrote', path)


if __name__ == '__main__':
  main(sys.argv)
