"""Tests for stau_jax.models.predictor: the scanned model against plain loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mmnist
from configs import tiny
from stau_jax import models
from stau_jax.models import unit
from tests import perturb
from tests import spec_reference


def _config(**model_overrides):
  config = tiny.get_config()
  config.model.update(model_overrides)
  return config


def _perturbed_params(config, seed=0):
  """Initial parameters with every leaf (LayerNorm scale/bias too) randomized."""
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(seed))
  return perturb.perturb(params, 0.1, seed + 1)


def _frames(config, batch=2, seed=0):
  height, width = config.data.image_size
  return jax.random.uniform(
      jax.random.PRNGKey(seed),
      (batch, config.data.total_length, height, width, config.data.channels))


def _future_mask(config, batch=2, seed=1):
  """A random 0/1 scheduled-sampling mask per (sequence, future step)."""
  num_future = config.data.total_length - config.data.input_length - 1
  mask = jax.random.bernoulli(jax.random.PRNGKey(seed), 0.5,
                              (batch, num_future, 1, 1, 1))
  height, width = config.data.image_size
  return jnp.broadcast_to(mask, (batch, num_future, height, width,
                                 config.data.channels)).astype(jnp.float32)


@pytest.mark.parametrize('overrides', [
    dict(cell='stau', num_layers=3, tau=2, theta=2, layer_loop='scan'),
    dict(cell='stau', num_layers=2, tau=3, theta=4, residual=True,
         recall=True),
    dict(cell='mau', num_layers=3, tau=2, theta=1, residual=True),
    dict(cell='stau_t_not_s', num_layers=3, tau=1, theta=2, recall=True),
    dict(cell='stau', num_layers=3, tau=2, theta=2, layer_loop='unrolled',
         remat='none'),
])
def test_scan_matches_plain_unrolled_loop(overrides):
  config = _config(**overrides)
  params = _perturbed_params(config)
  frames, mask = _frames(config), _future_mask(config)
  predictions = models.create_model(config).apply({'params': params}, frames,
                                                  mask)
  model = config.model
  expected = spec_reference.predict(
      params, frames, mask, num_layers=model.num_layers, tau=model.tau,
      theta=model.theta, num_downsample=model.num_downsample,
      input_length=config.data.input_length, variant=model.cell,
      residual=model.residual, recall=model.recall)
  assert predictions.shape == frames[:, 1:].shape
  np.testing.assert_allclose(predictions, expected, atol=1e-5)


def test_mmnist_parameter_count_is_the_reference_minus_unused_layers():
  count = models.count_params(models.param_shapes(mmnist.get_config()))
  assert count == 4_483_588 - 8_259 == 4_475_329


def _lowered_ops(config, batch=1):
  """Number of lines (about one op each) of the lowered StableHLO program."""
  model = models.create_model(config)
  params = models.param_shapes(config)
  frames = jax.ShapeDtypeStruct(_frames(config, batch).shape, jnp.float32)
  lowered = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(
      params, frames)
  return lowered.as_text().count('\n')


@pytest.mark.parametrize('cell', models.CELLS)
def test_program_size_does_not_grow_with_frames_or_layers(cell):
  short = _config(cell=cell, layer_loop='scan')
  long_ = _config(cell=cell, layer_loop='scan')
  short.data.total_length, long_.data.total_length = 8, 40
  # Only shapes inside the lines change (e.g. "8" -> "40"), not the program.
  assert _lowered_ops(long_) == _lowered_ops(short)
  if cell == 'stau':
    shallow, deep = (_config(num_layers=2, layer_loop='scan'),
                     _config(num_layers=16, layer_loop='scan'))
    assert _lowered_ops(deep) == _lowered_ops(shallow)


@pytest.mark.parametrize('layer_loop', ['unrolled', 'per_layer'])
def test_unrolled_layer_loops_repeat_the_layer_in_the_program(layer_loop):
  shallow = _lowered_ops(_config(num_layers=2, layer_loop=layer_loop))
  deep = _lowered_ops(_config(num_layers=4, layer_loop=layer_loop))
  scanned = _lowered_ops(_config(num_layers=4, layer_loop='scan'))
  assert deep > shallow and deep > scanned  # the layer called 4 times, not 2 or 1
  assert models.param_shapes(_config(layer_loop=layer_loop)) == (
      models.param_shapes(_config(layer_loop='scan')))


@pytest.mark.parametrize('cell', ['stau', 'mim', 'predrnnv2'])
def test_per_layer_loop_equals_the_unrolled_scan(cell, fast_compile):
  """Predictions, gradients (with the auxiliary loss), records and hidden
  states; MIM has two layer groups, PredRNN-v2 an auxiliary loss."""
  config = _config(cell=cell, num_layers=3, layer_loop='unrolled')
  params = _perturbed_params(config)
  frames, mask = _frames(config), _future_mask(config)
  results = []
  for layer_loop in ('unrolled', 'per_layer'):
    config.model.layer_loop = layer_loop
    model = models.create_model(config)

    def loss(p, model=model):
      predictions, auxiliary_loss = models.predict_with_auxiliary_loss(
          model, p, frames, mask)
      return jnp.mean((predictions - frames[:, 1:])**2) + auxiliary_loss

    results.append((jax.jit(jax.value_and_grad(loss))(params),
                    models.predict_with_records(model, params, frames)[1],
                    model.apply({'params': params}, frames,
                                return_hidden=True)))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      *results)
  (value, _), records, _ = results[1]
  assert value > 0 and set(records) == {
      r.name for r in models.create_model(config).records}


@pytest.fixture(scope='module')
def tiny_model():
  config = _config()
  return config, models.create_model(config), _perturbed_params(config)


def test_mask_of_ones_is_teacher_forcing(tiny_model):
  config, model, params = tiny_model
  frames = _frames(config)
  mixed = model.apply({'params': params}, frames, jnp.ones((2, 3, 1, 1, 1)))
  teacher = models.create_model(_config()).clone(
      input_length=config.data.total_length - 1)
  np.testing.assert_allclose(mixed, teacher.apply({'params': params}, frames),
                             atol=1e-6)


def test_zero_mask_ignores_future_frames_and_is_the_default(tiny_model):
  config, model, params = tiny_model
  frames = _frames(config)
  noisy = frames.at[:, config.data.input_length:].set(0.5)
  default = model.apply({'params': params}, frames)
  np.testing.assert_array_equal(
      default, model.apply({'params': params}, noisy, jnp.zeros((2, 3))[
          ..., None, None, None]))
  np.testing.assert_array_equal(default,
                                model.apply({'params': params}, noisy))


def test_mask_mixes_per_sequence(tiny_model):
  config, model, params = tiny_model
  frames = _frames(config)
  mask = jnp.array([[1., 1., 1.], [0., 0., 0.]])[..., None, None, None]
  mixed = model.apply({'params': params}, frames, mask)
  teacher = model.apply({'params': params}, frames, jnp.ones_like(mask))
  free = model.apply({'params': params}, frames)
  np.testing.assert_allclose(mixed[0], teacher[0], atol=1e-6)
  np.testing.assert_allclose(mixed[1], free[1], atol=1e-6)
  assert float(jnp.abs(teacher[1] - free[1]).max()) > 1e-4


@pytest.mark.parametrize('cell', models.CELLS)
@pytest.mark.parametrize('frontend', ['stau', 'patch'])
def test_gradients_are_finite_and_reach_every_parameter(cell, frontend,
                                                       fast_compile):
  overrides = dict(cell=cell, frontend=frontend)
  if frontend == 'patch':
    if cell in models.stau.CELLS:
      pytest.skip("STAU's units need the 'stau' front-end")
    overrides.update(num_downsample=0, patch_size=2, layer_norm=True)
  config = _config(**overrides)
  params = _perturbed_params(config)
  model = models.create_model(config)
  frames = _frames(config)

  def loss(p):
    predictions, auxiliary_loss = models.predict_with_auxiliary_loss(
        model, p, frames)
    return jnp.mean((predictions - frames[:, 1:])**2) + auxiliary_loss

  grads = jax.jit(jax.grad(loss))(params)
  for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(grad)), path
    assert float(jnp.abs(grad).max()) > 0, path


@pytest.mark.parametrize('layer_loop', ['scan', 'unrolled', 'per_layer'])
def test_rematerialized_cells_give_the_same_gradients(layer_loop, fast_compile):
  config = _config(residual=True, layer_loop=layer_loop)
  params = _perturbed_params(config)
  frames, mask = _frames(config), _future_mask(config)

  def gradients(remat):
    config.model.remat = remat
    model = models.create_model(config)
    loss = lambda p: jnp.mean(  # noqa: E731
        (model.apply({'params': p}, frames, mask) - frames[:, 1:])**2)
    # Only 'cells' puts the cell under a remat (jax.checkpoint) primitive.
    assert ('remat' in str(jax.make_jaxpr(loss)(params))) == (remat == 'cells')
    return jax.jit(jax.grad(loss))(params)

  saved_all, recomputed = gradients('none'), gradients('cells')
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      saved_all, recomputed)


def test_records_hold_attention_and_gates_oldest_first():
  config = _config(tau=3, theta=2)
  model = models.create_model(config)
  params = _perturbed_params(config)
  frames = _frames(config)
  predictions, records = models.predict_with_records(model, params, frames)
  np.testing.assert_allclose(predictions,
                             model.apply({'params': params}, frames), atol=1e-5)
  assert list(records) == ['alpha', 'beta', 'F_T', 'F_S', 'U_T', 'U_S']
  steps, layers = config.data.total_length - 1, config.model.num_layers
  alpha, beta = records['alpha'], records['beta']
  assert alpha.shape == (2, steps, layers, 3)
  assert beta.shape == (2, steps, layers, 2)
  np.testing.assert_allclose(alpha.sum(axis=-1), 1, rtol=1e-5)
  # At step 1 entries 0, 1 weigh the zero initial states of steps -2, -1
  # alike, entry 2 the state of step 0.
  np.testing.assert_allclose(alpha[:, 1, :, 0], alpha[:, 1, :, 1], rtol=1e-6)
  assert float(jnp.abs(alpha[:, 1, :, 2] - alpha[:, 1, :, 1]).min()) > 1e-4
  # Layer 0 sees only its own input: the last of its theta entries.
  np.testing.assert_array_equal(beta[:, :, 0], np.broadcast_to([0, 1], (2, 7, 2)))
  grid = config.data.image_size[0] // 2**config.model.num_downsample
  for gate in ('F_T', 'F_S', 'U_T', 'U_S'):
    assert records[gate].shape == (2, steps, layers, grid, grid,
                                   config.model.num_hidden)


@pytest.mark.parametrize('cell', models.CELLS)
def test_every_unit_records_what_it_declares(cell):
  config = _config(cell=cell, layer_loop='scan')
  model = models.create_model(config)
  params = _perturbed_params(config)
  frames = _frames(config)
  _, records = models.predict_with_records(model, params, frames)
  assert set(records) == {record.name for record in model.records}
  for record in model.records:
    values = np.asarray(records[record.name])
    assert values.shape[:3] == (2, config.data.total_length - 1,
                                config.model.num_layers), record.name
    recorded = values[np.isfinite(values)]
    assert recorded.size, record.name
    low, high = record.value_range
    assert low <= recorded.min() and recorded.max() <= high, record.name
    if record.kind != 'map':
      np.testing.assert_allclose(values.sum(-1), 1, rtol=1e-5)
  # Recording only on request: plain apply and training's keep nothing.
  _, state = model.apply({'params': params}, frames,
                         mutable=[unit.AUXILIARY])
  assert unit.RECORDS not in state


@pytest.mark.parametrize('cell, frontend', [('stau', 'stau'),
                                            ('predrnn', 'patch')])
def test_hidden_states_are_each_layers_output_on_request(cell, frontend):
  overrides = dict(cell=cell, frontend=frontend, num_layers=3)
  if frontend == 'patch':
    overrides.update(num_downsample=0, patch_size=2)
  config = _config(**overrides)
  model = models.create_model(config)
  params = _perturbed_params(config)
  frames = _frames(config)
  predictions, hidden = model.apply({'params': params}, frames,
                                    return_hidden=True)
  np.testing.assert_array_equal(predictions,
                                model.apply({'params': params}, frames))
  grid = 16 // 2**config.model.num_downsample // config.model.patch_size
  assert hidden.shape == (2, config.data.total_length - 1, 3, grid, grid,
                          config.model.num_hidden)
  # Layer 0's state at step 0 depends only on the first frame.
  changed = frames.at[:, 1:].set(0.5)
  _, hidden_changed = model.apply({'params': params}, changed,
                                  return_hidden=True)
  np.testing.assert_allclose(hidden_changed[:, 0, 0], hidden[:, 0, 0],
                             atol=1e-6)
  assert float(jnp.abs(hidden_changed[:, 1] - hidden[:, 1]).max()) > 1e-4


def test_patch_frontend_needs_no_downsampling_and_stau_needs_its_encoder():
  with pytest.raises(ValueError, match='num_downsample=0'):
    models.validate_model_config(_config(cell='predrnn', frontend='patch'))
  with pytest.raises(ValueError, match="frontend='stau'"):
    models.validate_model_config(_config(frontend='patch', num_downsample=0))
  with pytest.raises(ValueError, match='config.model.frontend'):
    models.validate_model_config(_config(frontend='unet'))


X86_FLAGS = 'flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni'


@pytest.mark.parametrize('cpuinfo, expected', [
    (X86_FLAGS + ' avx512_bf16\n', True),  # e.g. AMD EPYC (Zen 4)
    (X86_FLAGS + ' amx_bf16 amx_tile\n', True),  # Xeon Sapphire Rapids
    (X86_FLAGS + '\n', False),  # Xeon Ice Lake: emulated bfloat16
    ('Features\t: fp asimd sve bf16 i8mm\n', True),  # Arm
    ('Features\t: fp asimd\n', False),
    ('processor\t: 0\n', True),  # nothing listed: cannot tell
])
def test_cpu_bfloat16_is_read_from_cpuinfo(tmp_path, monkeypatch, cpuinfo,
                                           expected):
  monkeypatch.delenv('STAU_JAX_CPU_BFLOAT16', raising=False)
  path = tmp_path / 'cpuinfo'
  path.write_text('processor\t: 0\n' + cpuinfo)
  assert models.cpu_has_bfloat16(str(path)) is expected
  assert models.cpu_has_bfloat16(str(tmp_path / 'missing')) is True
  monkeypatch.setenv('STAU_JAX_CPU_BFLOAT16', '0' if expected else '1')
  assert models.cpu_has_bfloat16(str(path)) is not expected


def test_half_precision_on_a_cpu_without_bfloat16_is_float32(monkeypatch):
  monkeypatch.setenv('STAU_JAX_CPU_BFLOAT16', '0')
  assert models.compute_dtypes(True, 'cpu') == (jnp.float32, None)
  assert models.compute_dtypes(True, 'gpu') == (jnp.bfloat16, None)
  assert models.precision_name(True) == (
      'float32 (no bfloat16 instructions on this CPU)')
  monkeypatch.setenv('STAU_JAX_CPU_BFLOAT16', '1')
  assert models.compute_dtypes(True, 'cpu') == (jnp.float32, jnp.bfloat16)
  assert models.precision_name(True) == 'bfloat16 convolutions, float32 math'
  assert models.compute_dtypes(False, 'cpu') == (jnp.float32, None)


def test_half_precision_is_close_to_float32(tiny_model):
  config, model, params = tiny_model
  frames = _frames(config)
  half = models.create_model(config, half_precision=True)
  predictions = half.apply({'params': params}, frames)
  assert predictions.dtype == jnp.float32
  np.testing.assert_allclose(predictions, model.apply({'params': params},
                                                      frames), atol=0.1)


def test_patching_follows_the_spec_order():
  frames = np.arange(4 * 6 * 3).reshape(1, 4, 6, 3).astype(np.float32)
  patches = models.patch_frames(frames, 2)
  assert patches.shape == (1, 2, 3, 12)
  # Patch (0, 1) holds rows 0-1, columns 2-3, flattened as (row, col, c).
  np.testing.assert_array_equal(
      patches[0, 0, 1], frames[0, 0:2, 2:4].reshape(-1))
  np.testing.assert_array_equal(models.unpatch_frames(patches, 2), frames)


@pytest.mark.parametrize('field, value, message', [
    ('model.cell', 'lstm', 'config.model.cell'),
    ('model.filter_size', 4, 'filter_size must be odd'),
    ('model.tau', 0, 'config.model.tau must be a positive integer'),
    ('model.num_downsample', 5, 'divisible by patch_size'),
    ('data.image_size', (16, 15), 'config.data.image_size 16x15 is not '
                                  'divisible by'),
    ('data.input_length', 8, 'input_length < config.data.total_length'),
    ('model.conv_impl', 'cudnn', 'config.model.conv_impl'),
    ('model.layer_loop', 'while', 'config.model.layer_loop'),
    ('model.remat', 'all', 'config.model.remat'),
])
def test_bad_config_values_are_clear_errors(field, value, message):
  config = tiny.get_config()
  group, name = field.split('.')
  config[group][name] = value
  with pytest.raises(ValueError, match=message):
    models.validate_model_config(config)


def test_frames_of_the_wrong_shape_are_clear_errors(tiny_model):
  _, model, params = tiny_model
  with pytest.raises(ValueError, match='divisible'):
    model.apply({'params': params}, jnp.zeros((1, 8, 15, 16, 1)))
  with pytest.raises(ValueError, match='at least input_length'):
    model.apply({'params': params}, jnp.zeros((1, 4, 16, 16, 1)))


@pytest.mark.parametrize('axes', [(-3, -2, -1), (-4, -3, -2, -1), (-1,)])
def test_layer_norm_equals_flax_layer_norm_in_value_and_gradient(axes):
  """The same parameters, values and gradients as nn.LayerNorm (the
  batch-shared scale and bias only change how XLA sums their gradients)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 4, 5, 6)) * 3 + 1
  cotangent = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  ours = models.predictor.LayerNorm(epsilon=1e-5, reduction_axes=axes,
                                    feature_axes=axes)
  flax_norm = nn.LayerNorm(epsilon=1e-5, reduction_axes=axes,
                           feature_axes=axes, use_fast_variance=False)
  params = perturb.perturb(flax_norm.init(jax.random.PRNGKey(2), x), 0.5, 3)
  loss = lambda norm: jax.value_and_grad(  # noqa: E731
      lambda p, x: jnp.sum(norm.apply(p, x) * cotangent), argnums=(0, 1))(
          params, x)
  (value, grads), (want_value, want_grads) = loss(ours), loss(flax_norm)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      grads, want_grads)


def test_init_params_compiles_itself_on_a_concrete_key_and_traces_in_a_jit():
  config = _config()
  model = models.create_model(config)
  key = jax.random.PRNGKey(3)
  concrete = models.init_params(model, config, key)
  traced = jax.jit(lambda k: models.init_params(model, config, k))(key)
  assert jax.tree_util.tree_structure(concrete) == (
      jax.tree_util.tree_structure(models.param_shapes(config)))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      concrete, traced)
