"""Configs written by older stau_jax versions, brought up to date in one place.

Every config read back from a file passes through `upgrade_config`: a run's
config.json (`checkpoints.read_config`) and an export file's
(`export.load_export`). It adds the fields introduced since the first files
were written, with the values those versions behaved as, so that the code
after it reads every field plainly (`config.model.frontend`). A field added
to configs/base.py that older files lack gets one line in ADDED_FIELDS; one
that only a dataset's configs have, in ADDED_DATASET_FIELDS.
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
    'data.data_dir': '',
    'data.test_total_length': 0,
    'data.center_crop': True,
}
# config.data.dataset -> {field of config.data: the value older files mean}.
ADDED_DATASET_FIELDS = {
    'moving_mnist': {'test_seed': 1234},
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
  data = config.get('data')
  if isinstance(data, ml_collections.ConfigDict):
    for name, value in ADDED_DATASET_FIELDS.get(data.get('dataset'), {}).items():
      if name not in data:
        data[name] = value
  return config
