"""Tests for the input-pipeline benchmark CLI."""
import json
import os
import subprocess
import sys

from configs import tiny
from stau_jax.data import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_measure_reports_sequences_per_second():
  stats = benchmark.measure(tiny.get_config(), seconds=0.2, warmup=1)
  assert stats['sequences_per_second'] > 0 and stats['batches'] > 0
  assert stats['shape'] == [4, 8, 16, 16, 1]


def test_cli_prints_json_last():
  result = subprocess.run(
      [sys.executable, '-m', 'stau_jax.data.benchmark',
       '--config=configs/mmnist.py', '--config.data.digits=bundled',
       '--seconds=0.5', '--warmup=1'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  assert stats['dataset'] == 'moving_mnist'
  assert stats['shape'] == [16, 20, 64, 64, 1]
  assert stats['sequences_per_second'] > 0
