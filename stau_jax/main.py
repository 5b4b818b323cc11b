r"""Trains STAU.

  python -m stau_jax.main --config=configs/mmnist.py [--workdir=DIR]

Override any config field on the command line, e.g. --config.batch_size=8.
The workdir defaults to runs/<config.name>; running the same command again
resumes from its latest checkpoint. On several hosts, see
`distributed.initialize_from_environment` for the environment variables.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from stau_jax import cli
from stau_jax import distributed
from stau_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/mmnist.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and summaries; '
    'default runs/<config.name>.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(cli.drop_orbax_info)
  distributed.initialize_from_environment()
  workdir = _WORKDIR.value or f'runs/{_CONFIG.value.name}'
  logging.info('Config:\n%s', _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)
