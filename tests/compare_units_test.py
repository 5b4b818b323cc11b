"""Tests for the compare_units CLI's measurements (their shape, not timings)."""
import pytest

from configs import tiny
from stau_jax import compare_units
from stau_jax import models


def test_compare_measures_each_unit_in_the_same_encoder_decoder():
  config = tiny.get_config()
  results = compare_units.compare(config, ['convlstm', 'predrnn'], samples=10,
                                  steps=1)
  assert list(results) == ['convlstm', 'predrnn']
  for cell, stats in results.items():
    unit_config = tiny.get_config()
    unit_config.model.cell = cell
    assert stats['params'] == models.count_params(
        models.param_shapes(unit_config))
    assert stats['forward_flops_per_sequence'] > 0
    # 10 samples at batch 4: three forward batches.
    assert stats['inference_s'] == pytest.approx(3 * stats['forward_s'],
                                                 abs=0.011)
  assert results['predrnn']['params'] != results['convlstm']['params']
  table = compare_units.format_table(results)
  assert table.splitlines()[1].startswith('convlstm')
  assert '102.1' in table  # the paper's ConvLSTM MSE beside ours


def test_unknown_unit_is_refused_before_any_work():
  with pytest.raises(ValueError, match='choose one of'):
    compare_units.compare(tiny.get_config(), ['stau', 'lstm'], samples=1)
