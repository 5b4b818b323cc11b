"""Generate test vectors for stau_jax's comparison units from their references.

For each case below this script builds the unit's reference model with
random weights: OpenSTL's `<Unit>_Model` (from a checkout of
chengtan9907/OpenSTL) or, for motiongru, MotionRNN's `RNN` (from a checkout
of thuml/MotionRNN, core/models/MotionRNN_PredRNN.py). It moves every
LayerNorm weight and bias off 1 and 0 and every zero-initialised parameter
(MIM's peepholes) off 0, scales the readout conv_last by 10,
feeds random patched frames and a random 0/1 scheduled-sampling mask through
it and stores the inputs, the un-patched outputs, the config and the
state_dict in one .npz per case under tests/vectors/openstl/. PredRNN++ is
adjusted first (`fix_ghu_layer_norm`, `strengthen_predrnnpp`).
A case with `decouple_beta` (PredRNN-v2) runs with `return_loss=True`
and also stores the loss minus the MSE, the weighted decoupling loss, as
`auxiliary_loss`; a case with `reverse` 1 uses reverse scheduled sampling (a
mask over the T-2 inputs after the first).

Usage (from the repository root, in an environment with torch and numpy):
    python tests/vectors/make_openstl_vectors.py PATH/TO/OpenSTL [UNIT ...]
    python tests/vectors/make_openstl_vectors.py PATH/TO/MotionRNN motiongru

Only the unit files are loaded from the checkout (openstl/modules/
<unit>_modules.py, the other modules files its model imports from, and
openstl/models/<unit>_model.py; MotionRNN's
core/layers/MotionGRU.py, core/layers/SpatioTemporalLSTMCell_Motion_Highway.py
and core/models/MotionRNN_PredRNN.py); the packages' __init__ files, which
import timm and more, are never run. None of their code is in this
repository. This script does not depend on stau_jax.

MotionRNN quirks handled here: its forward fills the initial states with
nn.init.xavier_normal_ (random on every call), which is patched to zeros
during the forward, as stau_jax starts from zeros; it zero-initialises the
weights of MotionGRU's update, reset and output gates and of the warp gate,
which are drawn at random here so that the warp moves features by varying,
fractional offsets, some of them past the border.
"""
import importlib.util
import json
import os
import sys
import types
import zlib
from unittest import mock

import numpy as np
import torch

B = 2
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'openstl')

# unit -> (OpenSTL file stem, model class, cell classes its model imports:
# from openstl/modules/<stem>_modules.py, or '<file stem>.<class>' from another
# file of openstl/modules)
MODELS = {
    'convlstm': ('convlstm', 'ConvLSTM_Model', ('ConvLSTMCell',)),
    'predrnn': ('predrnn', 'PredRNN_Model', ('SpatioTemporalLSTMCell',)),
    'e3dlstm': ('e3dlstm', 'E3DLSTM_Model', ('Eidetic3DLSTMCell',)),
    'predrnnpp': ('predrnnpp', 'PredRNNpp_Model', ('CausalLSTMCell', 'GHU')),
    'mim': ('mim', 'MIM_Model', ('MIMBlock', 'MIMN',
                                 'predrnn_modules.SpatioTemporalLSTMCell')),
    'predrnnv2': ('predrnnv2', 'PredRNNv2_Model',
                  ('SpatioTemporalLSTMCellv2',)),
}

# Units whose reference is thuml/MotionRNN (the others are OpenSTL's).
MOTIONRNN_UNITS = ('motiongru',)

# One dict per vector: the unit, OpenSTL's layer_norm, frame channels, patch
# size, layers, hidden channels, filter size, frame size, total and input
# lengths; optionally conv_gain, a factor on the cells' conv weights, and
# for PredRNN-v2 decouple_beta and reverse (reverse scheduled sampling).
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
    # OpenSTL's E3D-LSTM hardcodes its kernel (2, 5, 5): filter 5 only.
    dict(name='e3dlstm_gray_p4', unit='e3dlstm', layer_norm=0, channels=1,
         patch=4, layers=3, hidden=4, filter=5, height=16, width=24, total=7,
         input=3),
    dict(name='e3dlstm_ln_rgb_p2', unit='e3dlstm', layer_norm=1, channels=3,
         patch=2, layers=2, hidden=4, filter=5, height=8, width=12, total=6,
         input=2),
    dict(name='motiongru_ln_gray_p4', unit='motiongru', layer_norm=1,
         channels=1, patch=4, layers=4, hidden=4, filter=3, height=16,
         width=24, total=7, input=3),
    dict(name='motiongru_rgb_p2', unit='motiongru', layer_norm=0, channels=3,
         patch=2, layers=2, hidden=8, filter=5, height=8, width=12, total=6,
         input=2),
    dict(name='predrnnpp_gray_p4', unit='predrnnpp', layer_norm=0, channels=1,
         patch=4, layers=3, hidden=8, filter=3, height=16, width=24, total=7,
         input=3),
    dict(name='predrnnpp_rgb_p2', unit='predrnnpp', layer_norm=0, channels=3,
         patch=2, layers=2, hidden=6, filter=5, height=8, width=12, total=6,
         input=2),
    # OpenSTL's PredRNN++ crashes with layer_norm=1 (see
    # fix_ghu_layer_norm); this case has that one-line fix.
    dict(name='predrnnpp_ln_fixed_ghu_rgb_p2', unit='predrnnpp', layer_norm=1,
         channels=3, patch=2, layers=2, hidden=6, filter=3, height=8,
         width=12, total=6, input=3),
    dict(name='mim_ln_gray_p4', unit='mim', layer_norm=1, channels=1, patch=4,
         layers=3, hidden=6, filter=3, height=16, width=24, total=7, input=3),
    dict(name='mim_rgb_p2', unit='mim', layer_norm=0, channels=3, patch=2,
         layers=3, hidden=4, filter=5, height=8, width=12, total=7, input=2,
         conv_gain=3),
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
  """OpenSTL's model class for `unit`, importing only the files it needs."""
  stem, model_class, cells = MODELS[unit]
  root = os.path.join(checkout, 'openstl')
  package = types.ModuleType('openstl.modules')
  for cell in cells:
    file_stem, _, cell = cell.rpartition('.')
    file_stem = file_stem or f'{stem}_modules'
    modules = _load(os.path.join(root, 'modules', f'{file_stem}.py'),
                    f'_openstl_{file_stem}')
    setattr(package, cell, getattr(modules, cell))
  sys.modules.setdefault('openstl', types.ModuleType('openstl'))
  sys.modules['openstl.modules'] = package
  model = _load(os.path.join(root, 'models', f'{stem}_model.py'),
                f'_openstl_{stem}_model')
  return getattr(model, model_class)


def load_motionrnn_class(checkout):
  """MotionRNN's MotionRNN_PredRNN.RNN, importing only it and its two layers."""
  for package in ('core', 'core.layers'):
    sys.modules.setdefault(package, types.ModuleType(package))
  for layer in ('MotionGRU', 'SpatioTemporalLSTMCell_Motion_Highway'):
    setattr(sys.modules['core.layers'], layer, _load(
        os.path.join(checkout, 'core', 'layers', f'{layer}.py'),
        f'core.layers.{layer}'))
  return _load(os.path.join(checkout, 'core', 'models',
                            'MotionRNN_PredRNN.py'), '_motionrnn_model').RNN


def build_openstl(checkout, case):
  """(OpenSTL model, forward(patches, mask, with_loss) -> (patched
  predictions, loss or None))."""
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
  if case['unit'] == 'predrnnpp':
    if case['layer_norm']:
      fix_ghu_layer_norm(model)
    strengthen_predrnnpp(model, case['layer_norm'])
  return model, lambda patches, mask, with_loss: model(
      patches, mask, return_loss=with_loss)


def build_motionrnn(checkout, case):
  """(MotionRNN model, forward(patches, mask, with_loss) -> (patched
  predictions, None)).

  The config is run.py's arguments that the model reads (batch_size fixes the
  states' batch). The states start from zeros instead of xavier_normal_
  noise, and the zero-initialised gate weights are drawn at random.
  """
  configs = types.SimpleNamespace(
      img_height=case['height'], img_width=case['width'],
      img_channel=case['channels'], patch_size=case['patch'],
      filter_size=case['filter'], stride=1, layer_norm=case['layer_norm'],
      device='cpu', batch_size=B, input_length=case['input'],
      total_length=case['total'])
  model = load_motionrnn_class(checkout)(
      case['layers'], [case['hidden']] * case['layers'], configs).eval()
  with torch.no_grad():
    for motion in model.motion_list:
      for conv in (motion.update, motion.reset, motion.warp.warp_gate):
        conv.weight.normal_(0, 0.3)
      motion.output.weight.normal_(0, 1.0)

  def forward(patches, mask, with_loss):
    del with_loss
    with mock.patch.object(torch.nn.init, 'xavier_normal_',
                           lambda tensor, gain=1.0: tensor.zero_()):
      return model(patches, mask)[0], None
  return model, forward


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


def fix_ghu_layer_norm(model):
  """Gives OpenSTL's GHU LayerNorms the channels of the convs they follow.

  With layer_norm=1 OpenSTL's GHU normalizes its 2C-channel convolutions
  with LayerNorm([C, h, w]), so the model fails on its first step. The
  sensible reading, LayerNorm([2C, h, w]), is what stau_jax computes.
  """
  for gates in (model.gradient_highway.z_concat,
                model.gradient_highway.x_concat):
    gates[1] = torch.nn.LayerNorm([gates[0].out_channels,
                                   *gates[1].normalized_shape[1:]])


def strengthen_predrnnpp(model, layer_norm):
  """Weights under which every part of PredRNN++ shows in its outputs.

  The GHU's kernels start in [-0.001, 0.001]: they get PyTorch's default
  initialization. Without LayerNorm, h' = tanh(o) * tanh(conv_last(...))
  with default-initialized kernels shrinks about tenfold per layer, so the
  cells' kernels are doubled.
  """
  with torch.no_grad():
    for module in model.gradient_highway.modules():
      if isinstance(module, torch.nn.Conv2d):
        module.reset_parameters()
    for module in model.cell_list.modules():
      if isinstance(module, torch.nn.Conv2d) and not layer_norm:
        module.weight.mul_(2)


def make_case(checkout, case, seed):
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  build = (build_motionrnn if case['unit'] in MOTIONRNN_UNITS
           else build_openstl)
  model, forward = build(checkout, case)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.add_(0.3 * torch.randn_like(module.weight))
        module.bias.add_(0.3 * torch.randn_like(module.bias))
    # Parameters that start at zero would test nothing.
    for parameter in model.parameters():
      if not parameter.any():
        parameter.normal_(0, 0.3)
    # Without LayerNorm, deep units' states stay tiny at PyTorch's default
    # init: larger weights in the cells make every part of them matter.
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d) and module is not model.conv_last:
        module.weight.mul_(case.get('conv_gain', 1))
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
    outputs, loss = forward(torch.from_numpy(patches), torch.from_numpy(mask),
                            with_loss)
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
  if units & set(MOTIONRNN_UNITS) and units - set(MOTIONRNN_UNITS):
    sys.exit(f'{sorted(MOTIONRNN_UNITS)} come from a thuml/MotionRNN '
             f'checkout, the others from OpenSTL: generate them in separate '
             f'runs.')
  os.makedirs(OUT_DIR, exist_ok=True)
  for case in CASES:
    if case['unit'] not in units:
      continue
    path = os.path.join(OUT_DIR, case['name'] + '.npz')
    seed = zlib.crc32(case['name'].encode())  # Stable as cases are added.
    np.savez_compressed(path, **make_case(checkout, case, seed))
    print('wrote', path)


if __name__ == '__main__':
  main(sys.argv)
