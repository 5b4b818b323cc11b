"""Shared pytest fixtures."""
import jax
import pytest


@pytest.fixture
def fast_compile():
  """Compiles with XLA's optimizations off (as flax's train_test.py does):
  for tests about what a program computes, not how fast it runs."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)
