r"""Compares the predictive units in the same encoder and decoder (Table 6).

  python -m stau_jax.compare_units --config=configs/mmnist.py \
      --cells=stau,mau,convlstm,predrnn --samples=800 [--batch_size=16]

For each unit, builds the config's model with `config.model.cell` set to it
(same front-end, layers and hidden channels: configs/mmnist.py is the paper's
Table 6 setting, 4 layers x 64 channels) and measures it with
`stau_jax.benchmark.run`: parameters, forward FLOPs per sequence (XLA's cost
analysis), inference time for --samples sequences (the median forward time
of one batch x the number of batches), training-step time, compile time and
the memory XLA plans for a training step. Prints a table, then one JSON
object (unit -> results) as the last line.
"""
import json
import math

from absl import app
from absl import flags
from absl import logging

from stau_jax import benchmark
from stau_jax import cli
from stau_jax.models import registry

FLAGS = flags.FLAGS
# The paper's Table 6 (Moving MNIST, 4 units, same encoder/decoder):
# parameters, FLOPs, inference seconds per 800 samples, MSE, SSIM.
PAPER_TABLE_6 = {
    'convlstm': ('0.98M', '250.88M', 16.47, 102.1, 0.747),
    'predrnn': ('1.57M', '401.92M', 17.74, 54.5, 0.839),
    'predrnnpp': ('1.80M', '460.80M', 21.25, 46.3, 0.899),
    'mim': ('3.03M', '775.68M', 45.13, 44.1, 0.910),
    'e3dlstm': ('4.70M', '1363.20M', 57.21, 40.1, 0.912),
    'motiongru': ('1.16M', '296.96M', 17.58, 34.3, 0.928),
    'mau': ('0.78M', '265.37M', 17.34, 29.5, 0.931),
    'stau_no_tam': ('0.78M', '265.37M', 17.35, 29.9, 0.933),
    'stau': ('0.78M', '267.48M', 19.58, 27.1, 0.939),
}


def compare(config, cells, samples, steps=3):
  """{cell: benchmark results + inference_s} for every unit in `cells`."""
  unit_configs = {}
  for cell in cells:
    registry.get(cell)
    unit_configs[cell] = config.copy_and_resolve_references()
    unit_configs[cell].model.cell = cell
    benchmark.validate(unit_configs[cell])  # every unit before any timing
  results = {}
  for cell, unit_config in unit_configs.items():
    logging.info('Measuring %s ...', cell)
    stats = benchmark.run(unit_config, steps)
    batches = math.ceil(samples / unit_config.batch_size)
    stats['inference_s'] = round(stats['forward_s'] * batches, 2)
    stats['samples'] = samples
    results[cell] = stats
  return results


def format_table(results):
  """The results as a text table, with the paper's Table 6 columns beside."""
  lines = [f'{"unit":<18}{"params":>11}{"GFLOP/seq":>11}{"infer s":>10}'
           f'{"step s":>9}{"compile s":>11}{"step MB":>9}   paper: params  '
           f'FLOPs  infer s  MSE  SSIM']
  for cell, stats in results.items():
    paper = PAPER_TABLE_6.get(cell)
    paper_text = ('   ' + '  '.join(str(v) for v in paper)) if paper else ''
    memory = stats['train_step_mb']
    lines.append(
        f'{cell:<18}{stats["params"]:>11,}'
        f'{stats["forward_flops_per_sequence"] / 1e9:>11.2f}'
        f'{stats["inference_s"]:>10.1f}{stats["train_step_s"]:>9.3f}'
        f'{stats["compile_s"]:>11.1f}'
        f'{"n/a" if memory is None else f"{memory:.0f}":>9}{paper_text}')
  return '\n'.join(lines)


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  cli.define_config_file(
      'config', 'configs/mmnist.py', 'Config file (model and data shape).')
  flags.DEFINE_list('cells', list(registry.CELLS),
                    'Units to compare (config.model.cell names).')
  flags.DEFINE_integer('samples', 800,
                       'Sequences the inference time is reported for.')
  flags.DEFINE_integer('batch_size', None, 'Sequences per batch; default '
                       'the config\'s batch_size.')
  flags.DEFINE_integer('steps', 3, 'Timed calls per measurement (median).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  if FLAGS.samples < 1 or FLAGS.steps < 1 or (FLAGS.batch_size or 1) < 1:
    raise app.UsageError('--samples, --batch_size and --steps must be >= 1.')
  cli.refuse_both('batch_size', 'config.batch_size', 'the batch size')
  if not FLAGS.cells:
    raise app.UsageError('--cells is empty; name the units to compare, e.g. '
                         '--cells=stau,convlstm')
  if len(set(FLAGS.cells)) < len(FLAGS.cells):
    raise app.UsageError(f'--cells={",".join(FLAGS.cells)} names a unit twice')
  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  results = compare(config, FLAGS.cells, FLAGS.samples, FLAGS.steps)
  first = next(iter(results.values()))
  print(f'Units in the {config.name} encoder/decoder ({first["device"]}, '
        f'{config.model.num_layers} layers x {config.model.num_hidden} '
        f'channels, batch {config.batch_size}, {first["total_length"]} '
        f'frames, inference for {FLAGS.samples} sequences):')
  print(format_table(results))
  print(json.dumps(results))


if __name__ == '__main__':
  cli.run(main, define_flags)
