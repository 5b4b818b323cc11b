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
import os
import signal
import sys
import time
from stau_jax import cli
from stau_jax import errors
from stau_jax import outputs
def main(argv):
  kind = argv[1]
  if kind == 'user':
    raise errors.ExportError('Not an export file', 'x.export', 'export again')
  if kind == 'value':
    raise ValueError('config.batch_size=3 is not divisible by 2')
  if kind == 'missing':
    open('/nonexistent/file.npy')
  if kind == 'package':
    import tensorflow_datasets.no_such_module_here
  if kind == 'missing_package':
    raise errors.MissingPackageError('Reading .ckpt files needs torch: pip '
                                     'install torch')
  if kind == 'unknown_module':
    import no_such_module_of_anyone
  if kind in ('interrupt', 'terminate'):
    with outputs.atomic_path(argv[2]) as temporary:
      with open(temporary, 'w') as f:
        f.write('half')
      if kind == 'interrupt':
        raise KeyboardInterrupt()
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(30)
  if kind == 'interrupt_message':
    try:
      raise KeyboardInterrupt()
    except KeyboardInterrupt:
      raise errors.UserError('Interrupted at step 7', None, 'run the same '
                             'command to resume')
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
    ('package', "error: The optional package 'tensorflow_datasets' is not "
     'installed: pip install tensorflow-datasets'),
    ('missing_package', 'error: Reading .ckpt files needs torch: pip install '
     'torch'),
])
def test_user_errors_are_one_line_and_exit_1(kind, line):
  result = runs.python('-c', _PROGRAM, kind, check=False)
  assert (result.returncode, result.stderr) == (1, line + '\n')
  verbose = runs.python('-c', _PROGRAM, kind, '--verbosity=1', check=False)
  assert verbose.returncode == 1 and 'Traceback' in verbose.stderr


@pytest.mark.parametrize('kind', ['bug', 'unknown_module'])
def test_bugs_keep_their_traceback(kind):
  result = runs.python('-c', _PROGRAM, kind, check=False)
  assert result.returncode == 1
  assert 'Traceback' in result.stderr
  assert ("KeyError: 'a bug'" in result.stderr or
          "No module named 'no_such_module_of_anyone'" in result.stderr)


@pytest.mark.parametrize('kind, status, line', [
    ('interrupt', 130, 'error: interrupted'),
    ('terminate', 143, 'error: terminated (SIGTERM)'),
])
def test_ctrl_c_and_sigterm_are_one_line_and_leave_no_file(tmp_path, kind,
                                                           status, line):
  output = tmp_path / 'out.json'
  result = runs.python('-c', _PROGRAM, kind, str(output), check=False)
  assert (result.returncode, result.stderr) == (status, line + '\n')
  assert not list(tmp_path.iterdir())  # neither the output nor a temporary


def test_a_user_error_raised_on_ctrl_c_is_printed_with_status_130():
  result = runs.python('-c', _PROGRAM, 'interrupt_message', check=False)
  assert (result.returncode, result.stderr) == (
      130, 'error: Interrupted at step 7: run the same command to resume\n')


def test_check_overrides_names_the_field_and_the_closest_one():
  config = runs.tiny_config()
  cli.check_overrides(config, argv=['x', '--config.model.tau=3',
                                    '--noconfig.half_precision'])
  with pytest.raises(cli.ConfigError, match=r"--config.model.tauu: "
                     r"config.model has no field 'tauu': did you mean "
                     r"--config.model.tau\?"):
    cli.check_overrides(config, argv=['x', '--config.model.tauu=3'])
  with pytest.raises(cli.ConfigError, match='cannot be overridden: only '
                     'these'):
    cli.check_overrides(config, hint='only these',
                        argv=['x', '--config.modle.tau=3'])


def test_package_root_is_above_the_config_package():
  assert cli.package_root(runs.TINY_CONFIG) == runs.REPO


def test_a_config_file_loads_from_any_working_directory(tmp_path):
  """A config importing a sibling of its own configs package, run from
  another folder: the file's repository goes on sys.path."""
  package = tmp_path / 'project' / 'configs'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'cli_test_base.py').write_text(
      'import ml_collections\n'
      'def get_config():\n'
      '  return ml_collections.ConfigDict({"seconds": 1.5})\n')
  (package / 'cli_test_child.py').write_text(
      'from configs import cli_test_base\n'
      'def get_config():\n'
      '  return cli_test_base.get_config()\n')
  program = ('from absl import flags\n'
             'from stau_jax import cli\n'
             'def define_flags():\n'
             '  cli.define_config_file("config", None, "config")\n'
             'cli.run(lambda argv: print(flags.FLAGS.config.seconds), '
             'define_flags)\n')
  result = runs.python('-c', program,
                       f'--config={package / "cli_test_child.py"}',
                       '--config.seconds=2.5', cwd=str(tmp_path))
  assert result.stdout.strip() == '2.5'


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
  (root / 'empty.npy').write_bytes(b'')
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
        'error: --config.model.tau cannot be overridden: the export fixes '
        'the model'),
    'evaluate --data and its config field': (
        ('-m', 'stau_jax.evaluate', '--export={root}/tiny.export',
         '--data={root}/empty.npy', '--config.data.test_set=generated'),
        'error: --data and --config.data.test_set both choose the test set'),
    'evaluate export is a directory': (
        ('-m', 'stau_jax.evaluate', '--export={root}'),
        'error: The export path is a directory ({root}): pass an export '
        'file'),
    'main override typo': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.model.tauu=3'),
        "error: --config.model.tauu: config.model has no field 'tauu': did "
        'you mean --config.model.tau?'),
    'main config without get_config': (
        ('-m', 'stau_jax.main', f'--config={runs.REPO}/configs/base.py',
         '--workdir={root}/new'),
        'error: --config: the file defines no get_config() '
        f'({runs.REPO}/configs/base.py)'),
    'main missing config file': (
        ('-m', 'stau_jax.main', '--config={root}/none.py',
         '--workdir={root}/new'),
        'error: --config: no such config file ({root}/none.py)'),
    'main batch_size 0': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.batch_size=0'),
        'error: config.batch_size=0 must be a positive integer.'),
    'main learning_rate nan': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.learning_rate=nan'),
        'error: config.learning_rate=nan must be a finite number.'),
    'main sampling rate inf': (
        ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
         '--workdir={root}/new', '--config.sampling_changing_rate=inf'),
        'error: config.sampling_changing_rate=inf must be a finite number.'),
    'recognize override typo': (
        ('-m', 'stau_jax.recognize',
         f'--config={runs.REPO}/configs/mmnist_action.py', '--predictor=none',
         '--config.classifier.num_clases=3'),
        "error: --config.classifier.num_clases: config.classifier has no "
        "field 'num_clases': did you mean --config.classifier.num_classes?"),
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
        'error: The export file does not exist ({root}/none.export)'),
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
    'compare_units empty cells': (
        ('-m', 'stau_jax.compare_units', f'--config={runs.TINY_CONFIG}',
         '--cells='),
        'error: --cells is empty; name the units to compare'),
    'compare_units two batch sizes': (
        ('-m', 'stau_jax.compare_units', f'--config={runs.TINY_CONFIG}',
         '--batch_size=4', '--config.batch_size=2'),
        'error: --batch_size and --config.batch_size both set the batch size; '
        'give one'),
    'compare_units batch_size 0 before timing': (
        ('-m', 'stau_jax.compare_units', f'--config={runs.TINY_CONFIG}',
         '--cells=stau,convlstm', '--config.batch_size=0'),
        'error: config.batch_size=0 must be a positive integer.'),
    'benchmark batch_size 0 before compiling': (
        ('-m', 'stau_jax.benchmark', f'--config={runs.TINY_CONFIG}',
         '--config.batch_size=0'),
        'error: config.batch_size=0 must be a positive integer.'),
    'benchmark profile_dir under a file': (
        ('-m', 'stau_jax.benchmark', f'--config={runs.TINY_CONFIG}',
         '--profile_dir={root}/clips.npy/trace'),
        'error: Cannot create --profile_dir: Not a directory '
        '({root}/clips.npy/trace): choose a writable folder'),
    'detect weights without onnx': (
        ('-m', 'stau_jax.detect', '--export={root}/tiny.export',
         '--data={root}/clips.npy', '--output={root}/det.json',
         '--detector_weights={root}/yolo.onnx'),
        'error: --detector_weights only applies with --detector=onnx; drop '
        'it'),
    'detect threshold nan': (
        ('-m', 'stau_jax.detect', '--export={root}/tiny.export',
         '--data={root}/clips.npy', '--output={root}/det.json',
         '--threshold=nan'),
        'error: flag --threshold=nan: --threshold must be a finite number'),
    'data.benchmark seconds inf': (
        ('-m', 'stau_jax.data.benchmark', f'--config={runs.TINY_CONFIG}',
         '--seconds=inf'),
        'error: flag --seconds=inf: --seconds must be positive and finite'),
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
