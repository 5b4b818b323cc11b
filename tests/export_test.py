"""Tests of export files: round trip, corrupt and incompatible files, the CLI."""
import hashlib
import json
import os

import jax
import numpy as np
import pytest
from flax import serialization

from stau_jax import checkpoints
from stau_jax import export
from stau_jax import models
from stau_jax import train
from tests import runs

runs.enable_compilation_cache()


def random_params(config, seed=0):
  """Parameters of config's model filled with random numbers (no init run)."""
  shapes = models.param_shapes(config)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _assert_same_params(actual, expected):
  actual = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
  expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  assert actual.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(actual[path], value)


def test_round_trip(tmp_path):
  config = runs.tiny_config()
  params = random_params(config)
  path = str(tmp_path / 'model.export')
  export.save_export(path, params, config)
  loaded, loaded_config = export.load_export(path)
  _assert_same_params(loaded, params)
  assert loaded_config.to_json() == config.to_json()


def test_corrupt_and_truncated_files_are_errors(tmp_path):
  config = runs.tiny_config()
  path = str(tmp_path / 'model.export')
  export.save_export(path, random_params(config), config)
  payload = open(path, 'rb').read()
  flipped = bytearray(payload)
  flipped[-100] ^= 0xFF  # inside the parameter bytes
  open(path, 'wb').write(bytes(flipped))
  with pytest.raises(export.ExportError, match='checksum'):
    export.load_export(path)
  open(path, 'wb').write(payload[:len(payload) // 2])
  with pytest.raises(export.ExportError, match='truncated or corrupt'):
    export.load_export(path)
  with pytest.raises(export.ExportError, match='does not exist'):
    export.load_export(str(tmp_path / 'missing.export'))
  with pytest.raises(export.ExportError, match='The export path is a '
                     'directory'):
    export.load_export(str(tmp_path))


def test_other_version_and_mismatched_params_are_errors(tmp_path):
  config = runs.tiny_config()
  path = str(tmp_path / 'model.export')
  export.save_export(path, random_params(config), config)
  contents = serialization.msgpack_restore(open(path, 'rb').read())
  contents['version'] = 2
  open(path, 'wb').write(serialization.msgpack_serialize(contents))
  with pytest.raises(export.ExportError, match='version 2'):
    export.load_export(path)
  contents['version'] = '1'
  open(path, 'wb').write(serialization.msgpack_serialize(contents))
  with pytest.raises(export.ExportError, match=r"has format version '1' "
                     r"\(str\); this stau_jax reads version 1 \(int\)"):
    export.load_export(path)
  bigger = runs.tiny_config()
  bigger.model.num_hidden = 16
  export.save_export(path, random_params(config), bigger)
  with pytest.raises(export.ExportError, match='shape'):
    export.load_export(path)


def _rewrite(path, **changes):
  """Rewrites the export file at `path` with some keys changed (None: removed)."""
  contents = serialization.msgpack_restore(open(path, 'rb').read())
  contents.update(changes)
  contents = {k: v for k, v in contents.items() if v is not None}
  if 'params' in changes and changes['params'] is not None:
    contents['params_sha256'] = hashlib.sha256(changes['params']).hexdigest()
  open(path, 'wb').write(serialization.msgpack_serialize(contents))


def test_missing_params_and_data_less_config_are_export_errors(tmp_path):
  config = runs.tiny_config()
  path = str(tmp_path / 'model.export')
  export.save_export(path, random_params(config), config)
  _rewrite(path, params=None)
  with pytest.raises(export.ExportError,
                     match=r'has no params \(.*model.export\)'):
    export.load_export(path)
  export.save_export(path, random_params(config), config)
  data_less = json.loads(config.to_json())
  del data_less['data']
  _rewrite(path, config=json.dumps(data_less))
  with pytest.raises(export.ExportError, match=r'Invalid config.*model.export'):
    export.load_export(path)


def test_non_finite_parameters_are_refused_on_save_and_load(tmp_path):
  config = runs.tiny_config()
  params = random_params(config)
  params['unroll']['decoder']['readout']['bias'] = np.full_like(
      params['unroll']['decoder']['readout']['bias'], np.nan)
  path = str(tmp_path / 'model.export')
  with pytest.raises(export.ExportError, match=r"\['readout'\]\['bias'\] "
                     'holds NaN or inf'):
    export.save_export(path, params, config)
  assert not os.path.exists(path)
  export.save_export(path, random_params(config), config)
  _rewrite(path, params=serialization.msgpack_serialize(params))
  with pytest.raises(export.ExportError, match=r'holds NaN or inf \(.*'
                     r'model.export\)'):
    export.load_export(path)


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A 4-step tiny run with checkpoints at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('export_run'))
  train.train_and_evaluate(
      runs.tiny_config(num_train_steps=4, checkpoint_every_steps=2,
                       eval_every_steps=4, num_eval_batches=1), workdir)
  return workdir


def test_export_cli_writes_the_checkpoint_params(trained_workdir, tmp_path):
  latest = str(tmp_path / 'latest.export')
  result = runs.python('-m', 'stau_jax.export', f'--workdir={trained_workdir}',
                       f'--output={latest}')
  assert 'Wrote' in result.stdout
  params, config = export.load_export(latest)
  _assert_same_params(params, checkpoints.load_params(trained_workdir)[0])
  assert config.to_json() == checkpoints.read_config(trained_workdir).to_json()

  early = str(tmp_path / 'step2.export')
  runs.python('-m', 'stau_jax.export', f'--workdir={trained_workdir}',
              '--step=2', f'--output={early}')
  early_params = export.load_export(early)[0]
  _assert_same_params(early_params,
                      checkpoints.load_params(trained_workdir, 2)[0])
  assert not np.array_equal(
      early_params['unroll']['decoder']['readout']['kernel'],
      params['unroll']['decoder']['readout']['kernel'])


def test_export_cli_errors(trained_workdir, tmp_path):
  output = str(tmp_path / 'x.export')
  result = runs.python('-m', 'stau_jax.export', f'--workdir={trained_workdir}',
                       '--step=3', f'--output={output}', check=False)
  assert result.returncode != 0
  assert 'no checkpoint for step 3' in result.stderr
  result = runs.python('-m', 'stau_jax.export',
                       f'--workdir={tmp_path / "nothing"}',
                       f'--output={output}', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'error: Cannot read the run config {tmp_path / "nothing"}/config.json: '
      "[Errno 2] No such file or directory: "
      f"'{tmp_path / 'nothing'}/config.json'"]
  assert not os.path.exists(output)


def test_export_cli_on_a_full_disk_keeps_the_old_file(trained_workdir, tmp_path):
  output = tmp_path / 'x.export'
  output.write_bytes(b'old')
  result = runs.python_on_full_disk('stau_jax.export',
                                    f'--workdir={trained_workdir}',
                                    f'--output={output}')
  runs.assert_full_disk_error(result, str(output), tmp_path, b'old')


def test_export_cli_refuses_a_directory_before_reading_the_run(tmp_path):
  result = runs.python('-m', 'stau_jax.export', '--workdir=missing',
                       f'--output={tmp_path}', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'error: --output={tmp_path} is a directory: name a file to write']
