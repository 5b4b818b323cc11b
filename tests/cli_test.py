"""Tests of stau_jax.cli and of every command line's refusals: one line on
stderr, `error: <what> (<file>): <what to do>`, exit status 1, no traceback."""
import json
import os
import socket

import jax
import numpy as np
import pytest

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import models
from tests import runs

_PROGRAM = """
import sys
from stau_jax import cli
from stau_jax import errors
def main(argv):
  kind = argv[1]
  if kind == 'user':
    raise errors.ExportError('Not an export file', 'x.export', 'export again')
  if kind == 'value':
    raise ValueError('config.batch_size=3 is not divisible by 2')
  if kind == 'missing':
    open('/nonexistent/file.npy')
  raise KeyError('a bug')
cli.run(main)
"""


def test_describe_gives_what_file_and_what_to_do():
  assert cli.describe(errors.ExportError('Corrupt', 'a.export', 'export it '
                                         'again')) == (
                                             'Corrupt (a.export): export it '
                                             'again')
  assert cli.describe(FileNotFoundError(2, 'No such file or directory',
                                        'in.npy')) == (
      'No such file or directory (in.npy): check the path, its permissions '
      'and the free space')
  assert cli.describe(ValueError('two\n  lines')) == 'two lines'


@pytest.mark.parametrize('kind, line', [
    ('user', 'error: Not an export file (x.export): export again'),
    ('value', 'error: config.batch_size=3 is not divisible by 2'),
    ('missing', 'error: No such file or directory (/nonexistent/file.npy): '
     'check the path, its permissions and the free space'),
])
def test_user_errors_are_one_line_and_exit_1(kind, line):
  result = runs.python('-c', _PROGRAM, kind, check=False)
  assert (result.returncode, result.stderr) == (1, line + '\n')
  verbose = runs.python('-c', _PROGRAM, kind, '--verbosity=1', check=False)
  assert verbose.returncode == 1 and 'Traceback' in verbose.stderr


def test_bugs_keep_their_traceback():
  result = runs.python('-c', _PROGRAM, 'bug', check=False)
  assert result.returncode == 1
  assert 'Traceback' in result.stderr and "KeyError: 'a bug'" in result.stderr


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
  """Files for the refusal cases: a workdir with a bad config.json, a busy
  workdir, an export file without params, an empty PyTorch checkpoint and a
  stand-in torch module that fails on it as torch does."""
  root = tmp_path_factory.mktemp('cli')
  (root / 'empty_config').mkdir()
  (root / 'empty_config' / 'config.json').write_text('{}')
  (root / 'empty_config' / 'checkpoints' / '1').mkdir(parents=True)
  (root / 'busy').mkdir()
  (root / 'busy' / 'lock').write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': os.getpid()}))
  config = runs.tiny_config()
  params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32),
                                  models.param_shapes(config))
  export.save_export(str(root / 'tiny.export'), params, config)
  (root / 'empty.ckpt').write_bytes(b'')
  (root / 'fake_torch').mkdir()
  (root / 'fake_torch' / 'torch.py').write_text(
      'class Tensor: pass\n'
      'def load(path, **kwargs):\n'
      '  raise EOFError("Ran out of input")\n')
  np.save(root / 'clips.npy', np.zeros((2, 8, 16, 16), np.uint8))
  return root


_CASES = {
    'main config.json {}': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/empty_config'),
        'error: The run config has no model or data section '
        '({root}/empty_config/config.json): it was not written by stau_jax'),
    'main busy workdir': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/busy'),
        'error: Another training (process {pid} on host '),
    'main image_size=16': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.data.image_size=16'),
        'error: config.data.image_size=(16,) must be (height, width)'),
    'main bad flag value': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.batch_size=x'),
        'error: flag --config.batch_size=x: '),
    'evaluate architecture override': (
        ('-m', 'stau_jax.evaluate', '--export={root}/tiny.export',
         '--config.model.tau=3'),
        'error: --config.model.tau cannot be overridden'),
    'export missing workdir': (
        ('-m', 'stau_jax.export', '--workdir={root}/none',
         '--output={root}/x.export'),
        'error: Cannot read the run config {root}/none/config.json'),
    'predict batch_size -1': (
        ('-m', 'stau_jax.predict', '--export={root}/tiny.export',
         '--input={root}/clips.npy', '--output={root}/out.npy',
         '--batch_size=-1'),
        'error: flag --batch_size=-1: '),
    'predict missing export': (
        ('-m', 'stau_jax.predict', '--export={root}/none.export',
         '--input={root}/clips.npy', '--output={root}/out.npy'),
        "error: Export file '{root}/none.export' does not exist."),
    'convert_torch empty file': (
        ('-m', 'stau_jax.convert_torch', '--checkpoint={root}/empty.ckpt',
         f'--config={runs.TINY_CONFIG}', '--output={root}/x.export'),
        'error: Cannot read the PyTorch checkpoint (EOFError: Ran out of '
        "input) ({root}/empty.ckpt): pass a file saved with torch.save"),
    'visualize missing input': (
        ('-m', 'stau_jax.visualize', '--export={root}/tiny.export',
         '--input={root}/none.npy', '--output={root}/pictures'),
        'error: No such file or directory ({root}/none.npy)'),
    'visualize index out of range': (
        ('-m', 'stau_jax.visualize', '--export={root}/tiny.export',
         '--input={root}/clips.npy', '--output={root}/pictures', '--index=5'),
        'error: --index=5 is outside the 2 sequences of {root}/clips.npy: '
        'see --helpshort'),
    'predict input not npy': (
        ('-m', 'stau_jax.predict', '--export={root}/tiny.export',
         '--input={root}/empty.ckpt', '--output={root}/out.npy'),
        'error: Cannot read the frames: '),
    'compare_units unknown cell': (
        ('-m', 'stau_jax.compare_units', f'--config={runs.TINY_CONFIG}',
         '--cells=stau,lstm'),
        "error: config.model.cell='lstm' is unknown; choose one of"),
    'detect onnx without weights': (
        ('-m', 'stau_jax.detect', '--export={root}/tiny.export',
         '--data={root}/clips.npy', '--output={root}/det.json',
         '--detector=onnx'),
        'error: --detector=onnx needs --detector_weights=MODEL.onnx'),
    'benchmark steps 0': (
        ('-m', 'stau_jax.benchmark', '--steps=0'),
        'error: flag --steps=0: '),
    'data.benchmark seconds 0': (
        ('-m', 'stau_jax.data.benchmark', f'--config={runs.TINY_CONFIG}',
         '--seconds=0'),
        'error: flag --seconds=0.0: --seconds must be positive'),
}


@pytest.mark.parametrize('name', sorted(_CASES))
def test_every_cli_refuses_in_one_line(cases, name):
  args, expected = _CASES[name]
  fill = {'root': cases, 'pid': os.getpid()}
  env = runs.environment(
      PYTHONPATH=f'{cases / "fake_torch"}{os.pathsep}{runs.REPO}')
  result = runs.python(*(a.format(**fill) for a in args), env=env,
                       check=False, timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      expected.format(**fill)), result.stderr[-3000:]
