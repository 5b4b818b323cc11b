r"""Measures input-pipeline throughput in sequences per second.

  python -m stau_jax.data.benchmark --config=configs/mmnist.py \
      --config.data.digits=bundled --seconds=5

Times `create_train_iterator` (what training consumes, one device) for
--seconds after --warmup batches. The last line printed is JSON:
{"dataset", "sequences_per_second", "batches", "batch_size", "shape", ...}.
"""
import json
import math
import time

from absl import app
from absl import flags

from stau_jax import cli
from stau_jax import data as data_lib

FLAGS = flags.FLAGS


def measure(config, seconds=5.0, warmup=3):
  """Returns throughput stats of the training iterator on one device."""
  data_lib.validate_data_config(config, num_devices=1)
  iterator = data_lib.create_train_iterator(config, num_devices=1)
  for _ in range(warmup):
    batch = next(iterator)
  batches = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(iterator)
    batches += 1
  elapsed = time.perf_counter() - start
  return {
      'dataset': config.data.dataset,
      'sequences_per_second': round(batches * config.batch_size / elapsed, 1),
      'batches': batches,
      'batch_size': config.batch_size,
      'shape': list(batch.shape[1:]),
      'seconds': round(elapsed, 2),
  }


def define_flags():
  """Defines the CLI flags (only when run as a program, so CLIs can share a process)."""
  cli.define_config_file('config', None, 'Config file.')
  flags.DEFINE_float('seconds', 5.0, 'Seconds to time.')
  flags.register_validator('seconds', lambda seconds: 0 < seconds < math.inf,
                           message='--seconds must be positive and finite')
  flags.DEFINE_integer('warmup', 3, 'Batches drawn before timing.',
                       lower_bound=0)


def main(argv):
  del argv
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/mmnist.py')
  stats = measure(config, FLAGS.seconds, FLAGS.warmup)
  print(f"{stats['dataset']}: {stats['sequences_per_second']:.0f} sequences/s "
        f"(batch {stats['batch_size']}, frames {stats['shape']})")
  print(json.dumps(stats))


if __name__ == '__main__':
  cli.run(main, define_flags)
