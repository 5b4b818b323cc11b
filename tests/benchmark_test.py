"""Tests for the model benchmark CLI (shape of its output, not timings)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from stau_jax import benchmark
from stau_jax import host_memory
from stau_jax import onednn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('train_step_s', 'forward_s', 'compile_s', 'peak_rss_mb',
        'peak_device_mb', 'samples_per_s', 'device', 'params')


def test_cli_prints_json_last_and_writes_a_trace(tmp_path):
  environment = {name: value for name, value in os.environ.items()
                 if name != 'GLIBC_TUNABLES'}
  result = subprocess.run(
      [sys.executable, '-m', 'stau_jax.benchmark', '--config=configs/tiny.py',
       '--steps=1', '--config.half_precision=True',
       f'--profile_dir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(environment, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  for key in KEYS:
    assert key in stats, key
  assert stats['train_step_s'] > 0 and stats['forward_s'] > 0
  assert stats['params'] > 0 and stats['batch_size'] == 4
  assert stats['conv_impl'] in ('fast', 'resample', 'xla', 'onednn')
  assert stats['compute_dtype'] == 'bfloat16 convolutions, float32 math'
  if stats['device'].startswith('cpu'):
    assert stats['peak_device_mb'] is None
  # Started without glibc's tunable, the program restarted itself with it
  # where the kernel gives huge pages on request.
  assert stats['huge_pages'] == (host_memory.huge_pages_environment(
      environment, host_memory._glibc_version(), host_memory._thp_mode())
                                 is not None)
  traces = [name for _, _, names in os.walk(tmp_path) for name in names]
  assert 'perfetto_trace.json.gz' in traces


def test_flop_count_counts_scan_bodies_per_step_and_convolutions():
  weights = jnp.ones((5, 6))

  def scanned(x):  # 3 steps of a (4, 5) @ (5, 6) matmul
    return jax.lax.scan(lambda c, _: (c, c @ weights), x, None, length=3)[1]

  def conv(x, kernel):  # (1, 8, 8, 2) * (3, 3, 2, 3) -> (1, 8, 8, 3)
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  assert benchmark.count_flops(jax.make_jaxpr(jax.jit(scanned))(
      jnp.ones((4, 5))).jaxpr) == 3 * 2 * 4 * 6 * 5
  assert benchmark.count_flops(jax.make_jaxpr(conv)(
      jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 3))).jaxpr) == (
          2 * 8 * 8 * 3 * 3 * 3 * 2)


def test_flop_count_counts_onednn_calls_forward_and_backward():
  if not onednn.available():
    pytest.skip('oneDNN extension not built here')
  x, kernel = jnp.ones((2, 8, 8, 2)), jnp.ones((3, 3, 2, 3))
  strided = lambda x, kernel: onednn.conv(  # noqa: E731
      x, kernel, (2, 2), ((1, 1), (1, 1)))  # -> (2, 4, 4, 3)
  forward = 2 * 2 * 4 * 4 * 3 * 3 * 3 * 2
  assert benchmark.count_flops(
      jax.make_jaxpr(strided)(x, kernel).jaxpr) == forward
  # The gradients: one backward-data and one backward-weights call, each
  # as many FLOPs as the forward.
  assert benchmark.count_flops(jax.make_jaxpr(jax.grad(
      lambda x, kernel: jnp.sum(strided(x, kernel)), argnums=(0, 1)))(
          x, kernel).jaxpr) == 3 * forward
