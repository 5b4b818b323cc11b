"""Configs written by older stau_jax versions, brought up to date in one place.

Every config read back from a file passes through `upgrade_config`: a run's
config.json (`checkpoints.read_config`) and an export file's
(`export.load_export`). It adds the fields introduced since the first files
were written, with the values those versions behaved as, so that the code
after it reads every field plainly (`config.model.frontend`). A field added
to configs/base.py that older files lack gets one line in ADDED_FIELDS.
"""
import copy

import ml_collections

# Dotted field -> the value a config written before the field existed means.
ADDED_FIELDS = {
    'model.frontend': 'stau',
    'model.layer_norm': False,
    'model.decouple_beta': 0.1,
    'model.conv_impl': 'auto',
    'model.layer_loop': 'auto',
    'model.remat': 'auto',
    'eval_metrics': 'mse,mae,psnr,ssim,ssim_dr1',
    'num_eval_batches': -1,
    'keep_checkpoints': 3,
}


def upgrade_config(config):
  """A copy of `config` (a ConfigDict) with ADDED_FIELDS where it lacks them.

  Sections it lacks (no `model`) stay absent: the readers name them.
  """
  config = copy.deepcopy(config)
  for path, value in ADDED_FIELDS.items():
    *parents, name = path.split('.')
    section = config
    for key in parents:
      section = section.get(key)
      if not isinstance(section, ml_collections.ConfigDict):
        break
    else:
      if name not in section:
        section[name] = value
  return config
