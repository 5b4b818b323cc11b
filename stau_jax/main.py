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

from stau_jax import cli
from stau_jax import distributed
from stau_jax import train

FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI's flags (only when run as a program)."""
  cli.define_config_file('config', None,
                         'Experiment config file, e.g. configs/mmnist.py.')
  flags.DEFINE_string(
      'workdir', None, 'Directory for checkpoints, metrics and summaries; '
      'default runs/<config.name>.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(cli.drop_orbax_info)
  distributed.initialize_from_environment()
  workdir = FLAGS.workdir or f'runs/{FLAGS.config.name}'
  logging.info('Config:\n%s', FLAGS.config)
  train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == '__main__':
  cli.run(main, define_flags)
