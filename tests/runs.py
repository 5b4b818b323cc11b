"""Shared test helpers: tiny configs, the test set as arrays, subprocess runs.

All runs share a persistent XLA compilation cache, so each program (tiny train
step, eval step, ...) compiles once per test session instead of once per run.
"""
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from configs import tiny
from stau_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, 'configs', 'tiny.py')
TWO_CPU_DEVICES = '--xla_force_host_platform_device_count=2'
COMPILATION_CACHE = os.path.join(tempfile.gettempdir(),
                                 f'stau_jax_test_xla_cache_{os.getuid()}')


def enable_compilation_cache():
  """Makes this process read and write the shared compilation cache."""
  jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE)


def tiny_config(**overrides):
  """configs/tiny.py with top-level fields overridden."""
  config = tiny.get_config()
  config.update(overrides)
  return config


def test_arrays(config, batch_size=None):
  """The whole (small) test set as float32 (N, T_test, H, W, C)."""
  return np.concatenate([
      batch['frames'][batch['valid']]
      for batch in data.create_test_iterator(config, batch_size)])


def environment(**variables):
  """os.environ for a subprocess: repo importable, shared compilation cache."""
  env = dict(os.environ, PYTHONPATH=REPO,
             JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE)
  env.update(variables)
  return env


def python(*args, env=None, cwd=REPO, timeout=300, check=True, **kwargs):
  """Runs `python ARGS` to completion; returns the CompletedProcess."""
  result = subprocess.run([sys.executable, *args], env=env or environment(),
                          cwd=cwd, timeout=timeout, capture_output=True,
                          text=True, **kwargs)
  if check and result.returncode:
    raise AssertionError(f'python {" ".join(args)} failed with code '
                         f'{result.returncode}:\n{result.stderr[-5000:]}')
  return result


def train_args(workdir, *overrides):
  """Arguments of `python -m stau_jax.main` on configs/tiny.py."""
  return ('-m', 'stau_jax.main', f'--config={TINY_CONFIG}',
          f'--workdir={workdir}', *overrides)
