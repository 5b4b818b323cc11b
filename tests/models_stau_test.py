"""Tests for stau_jax.models.stau against docs/model.md's equations written out."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from stau_jax import models
from stau_jax.models import stau as cell_lib
from stau_jax.models import unit
from tests import perturb
from tests import spec_reference

B, H, W, C, TAU, THETA = 2, 6, 4, 3, 3, 3


def _random_inputs(seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  normal = lambda key, shape: jax.random.normal(key, shape)  # noqa: E731
  return dict(
      temporal=normal(keys[0], (B, H, W, C)),
      spatial=normal(keys[1], (B, H, W, C)),
      temporal_history=normal(keys[2], (B, TAU, H, W, C)),
      spatial_history=normal(keys[3], (B, TAU, H, W, C)),
      lower_temporal=normal(keys[4], (B, THETA, H, W, C)),
      lower_spatial=normal(keys[5], (B, THETA, H, W, C)))


def _entries(stack):
  """(B, N, h, w, C) -> the spec's list of N (B, h, w, C) entries."""
  return list(jnp.swapaxes(stack, 0, 1))


def _cell(variant, residual=False):
  return cell_lib.STAUCell(C, 3, cell_lib.VARIANTS[variant], residual,
                           models.conv_factory(), models.norm_factory())


def _perturbed_params(module, inputs, seed=0):
  """Initial parameters with every leaf (LayerNorm scale/bias too) randomized."""
  params = module.init(jax.random.PRNGKey(seed), **inputs)['params']
  return perturb.perturb(params, 0.2, seed + 1)


@pytest.mark.parametrize('variant', cell_lib.CELLS)
@pytest.mark.parametrize('residual', [False, True])
@pytest.mark.parametrize('num_valid', [1, 2, THETA])
def test_cell_matches_spec_equations(variant, residual, num_valid):
  module = _cell(variant, residual)
  inputs = _random_inputs(seed=num_valid)
  params = _perturbed_params(module, inputs)
  valid = jnp.arange(THETA) < num_valid
  new_temporal, new_spatial = module.apply({'params': params}, **inputs,
                                           lower_valid=valid)
  expected_temporal, expected_spatial = spec_reference.cell(
      params, inputs['temporal'], inputs['spatial'],
      _entries(inputs['temporal_history']), _entries(inputs['spatial_history']),
      _entries(inputs['lower_temporal'])[:num_valid],
      _entries(inputs['lower_spatial'])[:num_valid], variant, residual)
  np.testing.assert_allclose(new_temporal, expected_temporal, atol=2e-5)
  np.testing.assert_allclose(new_spatial, expected_spatial, atol=2e-5)


def test_grouped_convolutions_keep_parameters_and_values():
  """Where the conv factory runs grouped convolutions fast (oneDNN), the
  cell's same-shape convolution pairs are one grouped call each: the same
  parameter tree, initial values and outputs as four separate ConvNorms
  (XLA's or oneDNN's)."""
  inputs = _random_inputs(seed=4)
  grouped_conv = models.conv_factory(conv_impl='onednn')
  if not grouped_conv.fast_groups:
    pytest.skip('oneDNN extension not built here')
  separate_conv = models.conv_factory(conv_impl='fast')
  assert not separate_conv.fast_groups
  cells = [cell_lib.STAUCell(C, 3, cell_lib.VARIANTS['stau'], True, conv,
                             models.norm_factory())
           for conv in (grouped_conv, separate_conv)]
  inits = [cell.init(jax.random.PRNGKey(0), **inputs)['params']
           for cell in cells]
  jax.tree.map(np.testing.assert_array_equal, inits[0], inits[1])
  assert set(inits[0]) == {'conv_s_next', 'conv_t_next', 'conv_s', 'conv_t'}
  params = perturb.perturb(inits[0], 0.2, 1)
  outputs = [cell.apply({'params': params}, **inputs) for cell in cells]
  for got, want in zip(*outputs):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  one_by_one = models.conv_factory(conv_impl='onednn')
  one_by_one.fast_groups = False
  calls = [
      str(jax.make_jaxpr(lambda p, conv=conv: cell_lib.STAUCell(
          C, 3, cell_lib.VARIANTS['stau'], True, conv,
          models.norm_factory()).apply({'params': p}, **inputs))(params)
          ).count('ffi_call')
      for conv in (grouped_conv, one_by_one)]
  assert calls == [2, 4], calls


# Which inputs each variant must ignore (docs/model.md, "Variants").
IGNORED_INPUTS = {
    'stau': (),
    'mau': ('lower_temporal', 'lower_spatial'),
    'stau_no_tam': ('temporal_history', 'spatial_history'),
    'stau_s_not_t': ('spatial_history',),
    'stau_t_not_s': ('lower_temporal',),
    'stau_independent': ('spatial_history', 'lower_temporal'),
}


@pytest.mark.parametrize('variant', cell_lib.CELLS)
def test_variants_read_exactly_the_inputs_the_spec_says(variant):
  module = _cell(variant)
  inputs = _random_inputs(seed=7)
  params = _perturbed_params(module, inputs)
  baseline = module.apply({'params': params}, **inputs)
  for name in ('temporal_history', 'spatial_history', 'lower_temporal',
               'lower_spatial'):
    changed = dict(inputs, **{name: inputs[name] * 3 + 1})
    outputs = module.apply({'params': params}, **changed)
    difference = max(float(jnp.abs(a - b).max())
                     for a, b in zip(outputs, baseline))
    if name in IGNORED_INPUTS[variant]:
      assert difference == 0, f'{variant} must ignore {name}'
    else:
      assert difference > 1e-4, f'{variant} must read {name}'


def test_attention_weights_mask_empty_slots_exactly():
  keys = jax.random.normal(jax.random.PRNGKey(0), (B, 4, H, W, C))
  query = jax.random.normal(jax.random.PRNGKey(1), (B, H, W, C))
  valid = jnp.array([True, True, False, False])
  weights = cell_lib.attention_weights(keys, query, valid)
  assert weights.shape == (B, 4)
  np.testing.assert_array_equal(weights[:, 2:], 0)
  np.testing.assert_allclose(
      weights[:, :2].T,
      spec_reference.softmax_weights(_entries(keys)[:2], query), rtol=1e-6)
  np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-6)


def test_attention_weights_use_sqrt_of_state_size():
  keys = jnp.stack([jnp.ones((1, H, W, C)), jnp.zeros((1, H, W, C))], axis=1)
  weights = cell_lib.attention_weights(keys, jnp.ones((1, H, W, C)))
  score = H * W * C / np.sqrt(H * W * C)
  np.testing.assert_allclose(weights[0], [1 / (1 + np.exp(-score)),
                                          1 / (1 + np.exp(score))],
                             rtol=1e-5)


@pytest.mark.parametrize('mask', ['none', 'traced', 'numpy'])
def test_attention_over_a_tuple_of_entries_equals_the_stack(mask):
  keys = jax.random.normal(jax.random.PRNGKey(0), (B, 4, H, W, C))
  values = jax.random.normal(jax.random.PRNGKey(1), (B, 4, H, W, C))
  query = jax.random.normal(jax.random.PRNGKey(2), (B, H, W, C))
  valid = {'none': None, 'traced': jnp.array([True, False, True, True]),
           'numpy': np.array([True, False, True, True])}[mask]
  weights = cell_lib.attention_weights(keys, query, valid)
  tuple_weights = cell_lib.attention_weights(tuple(_entries(keys)), query,
                                             valid)
  np.testing.assert_allclose(tuple_weights, weights, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      cell_lib.attend(weights, tuple(_entries(values)), valid),
      cell_lib.attend(weights, values, valid), rtol=1e-5, atol=1e-6)


def test_a_numpy_mask_leaves_invalid_entries_of_a_tuple_unread():
  keys = jax.random.normal(jax.random.PRNGKey(0), (B, 3, H, W, C))
  query = jax.random.normal(jax.random.PRNGKey(1), (B, H, W, C))
  nan = jnp.full((B, H, W, C), jnp.nan)
  entries = (nan,) + tuple(_entries(keys))[1:]
  valid = np.array([False, True, True])
  weights = cell_lib.attention_weights(entries, query, valid)
  np.testing.assert_array_equal(weights[:, 0], 0)
  np.testing.assert_allclose(
      weights[:, 1:].T,
      spec_reference.softmax_weights(_entries(keys)[1:], query), rtol=1e-6)
  summed = cell_lib.attend(weights, entries, valid)
  assert bool(jnp.isfinite(summed).all())
  # A traced mask reads every entry: 0 * NaN.
  assert not bool(jnp.isfinite(
      cell_lib.attend(weights, entries, jnp.asarray(valid))).all())


def test_layer_with_a_python_int_index_passes_the_states_up_as_a_tuple():
  """layer_loop='per_layer': the flow is a tuple of the lower layers' states
  themselves, no stack; with a traced index it stays a stack. Same cell
  outputs either way."""
  layer = cell_lib.STAULayer(C, 3, TAU, THETA, cell_lib.VARIANTS['stau'],
                             False, models.conv_factory(),
                             models.norm_factory())
  inputs = _random_inputs(seed=5)
  state = (inputs['temporal'], inputs['temporal_history'],
           inputs['spatial_history'])
  flow = layer.initial_flow(B, H, W, jnp.float32)
  params = layer.init(jax.random.PRNGKey(0), inputs['spatial'], flow, state,
                      3, 0)['params']
  outputs = {}
  for index in (0, jnp.asarray(0)):
    spatial, lower, new_state = layer.apply(
        {'params': params}, inputs['spatial'], flow, state, 3, index)
    kind = 'static' if isinstance(index, int) else 'traced'
    outputs[kind] = (spatial, new_state)
    if kind == 'static':
      assert isinstance(lower[0], tuple) and len(lower[0]) == THETA
      assert lower[0][0] is inputs['temporal']
      assert lower[1][0] is inputs['spatial']
    else:
      assert lower[0].shape == (B, THETA, H, W, C)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               outputs['static'], outputs['traced'])


def test_cell_records_attention_and_gates_only_on_request():
  module = _cell('stau')
  inputs = _random_inputs(seed=3)
  params = _perturbed_params(module, inputs)
  _, state = module.apply({'params': params}, **inputs,
                          mutable=[unit.RECORDS])
  recorded = {name: value[0] for name, value in state[unit.RECORDS].items()}
  assert set(recorded) == {r.name for r in cell_lib.records('stau')}
  assert recorded['alpha'].shape == (B, TAU)
  assert recorded['beta'].shape == (B, THETA)
  for gate in ('F_T', 'F_S', 'U_T', 'U_S'):
    assert recorded[gate].shape == (B, H, W, C)
    assert float(recorded[gate].min()) >= 0
    assert float(recorded[gate].max()) <= 1
  _, state = module.apply({'params': params}, **inputs, mutable=[])
  assert not state
  # In the given slot order.
  _, state = module.apply({'params': params}, **inputs,
                          history_order=jnp.array([2, 0, 1]),
                          mutable=[unit.RECORDS])
  np.testing.assert_array_equal(state[unit.RECORDS]['alpha'][0],
                                recorded['alpha'][:, [2, 0, 1]])


def test_mau_records_no_spatial_attention():
  module = _cell('mau')
  inputs = _random_inputs(seed=4)
  params = _perturbed_params(module, inputs)
  _, state = module.apply({'params': params}, **inputs,
                          mutable=[unit.RECORDS])
  assert set(state[unit.RECORDS]) == {'alpha', 'F_T', 'U_T', 'U_S'}
  assert [r.name for r in cell_lib.records('mau')] == [
      'alpha', 'F_T', 'U_T', 'U_S']


def test_ring_order_lists_slots_oldest_first():
  np.testing.assert_array_equal(cell_lib.ring_order(step=6, size=5),
                                [2, 3, 4, 0, 1])  # steps 2..6 live there.
  np.testing.assert_array_equal(cell_lib.ring_order(step=1, size=3), [2, 0, 1])


@pytest.mark.parametrize('name, value, message', [
    ('tau', 0, 'config.model.tau must be a positive integer for the STAU '
     'units; got 0'),
    ('theta', 2.5, 'config.model.theta must be a positive integer'),
    ('residual', None, 'config.model.residual must be True or False'),
])
def test_stau_checks_its_own_fields(name, value, message):
  config = tiny.get_config()
  del config.model[name]  # a value of another type
  config.model[name] = value
  with pytest.raises(ValueError, match=message):
    models.validate_model_config(config)


def test_other_units_need_no_stau_fields():
  config = tiny.get_config()
  for name in ('tau', 'theta', 'residual'):
    del config.model[name]
  config.model.cell = 'convlstm'
  models.validate_model_config(config)
  config.model.cell = 'stau'
  with pytest.raises(ValueError, match='config.model.tau must be'):
    models.validate_model_config(config)
