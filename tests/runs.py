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
# The run's own cache (tests/conftest.py), else one per user.
COMPILATION_CACHE = os.environ.get('STAU_JAX_TEST_CACHE') or os.path.join(
    tempfile.gettempdir(), f'stau_jax_test_xla_cache_{os.getuid()}')


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


_FULL_DISK = """
import errno, runpy, sys
from stau_jax import outputs
def full_disk(path):
  raise OSError(errno.ENOSPC, 'No space left on device', path)
outputs._fsync = full_disk
sys.argv.pop(0)
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def python_on_full_disk(module, *args, **kwargs):
  """Runs `python -m MODULE ARGS` where every file written through
  stau_jax.outputs fails as on a full disk (after its content is written)."""
  return python('-c', _FULL_DISK, module, *args, check=False, **kwargs)


def assert_full_disk_error(result, path, folder, old=None):
  """`result` failed with one line naming `path`; `folder` holds no
  temporary file and `path` still holds `old` (None: absent)."""
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: The disk is full; nothing was written ({path}): free some '
      'space and run again'), result.stderr
  assert not [name for name in os.listdir(folder) if '.tmp' in name]
  if old is None:
    assert not os.path.exists(path)
  else:
    with open(path, 'rb') as f:
      assert f.read() == old


def train_args(workdir, *overrides):
  """Arguments of `python -m stau_jax.main` on configs/tiny.py."""
  return ('-m', 'stau_jax.main', f'--config={TINY_CONFIG}',
          f'--workdir={workdir}', *overrides)
