"""Shared pytest fixtures, and one compilation cache per test run."""
import os
import shutil
import tempfile

import jax
import pytest

CACHE_VARIABLE = 'STAU_JAX_TEST_CACHE'
# Half precision on CPU is mixed precision in every test, on any CPU
# (predictor.cpu_has_bfloat16; its own tests set the variable themselves).
os.environ.setdefault('STAU_JAX_CPU_BFLOAT16', '1')


def pytest_configure(config):
  """Gives the run a fresh compilation cache (tests/runs.py), shared by its
  xdist workers and the subprocesses tests start, never by other runs: a
  jaxlib segfaulted reading an entry another run had left."""
  if not hasattr(config, 'workerinput') and CACHE_VARIABLE not in os.environ:
    os.environ[CACHE_VARIABLE] = tempfile.mkdtemp(prefix='stau_jax_test_xla_')
    config.stash_cache_dir = os.environ[CACHE_VARIABLE]


def pytest_unconfigure(config):
  cache = getattr(config, 'stash_cache_dir', None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)
    del os.environ[CACHE_VARIABLE]


@pytest.fixture
def fast_compile():
  """Compiles with XLA's optimizations off (as flax's train_test.py does):
  for tests about what a program computes, not how fast it runs."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)
