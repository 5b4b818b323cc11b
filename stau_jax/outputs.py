"""Files a command writes: whole or absent, and checked before the work.

Every output goes through `atomic_path` (or `write_bytes` / `write_text`):
the content is written to a temporary file beside the final path, flushed to
disk (fsync) and renamed onto it, so a reader sees the old file or the new
one, never a half-written one. The temporary file is removed on any failure,
including KeyboardInterrupt. `check_output_paths` refuses bad output paths before any
prediction or evaluation runs.

  paths = outputs.check_output_paths(output=FLAGS.output, picture=FLAGS.picture,
                                     suffixes={'picture': ('.png',)})
  with outputs.atomic_path(FLAGS.output) as temporary:
    np.save(temporary, array)      # any writer that takes a path
"""
import contextlib
import errno
import os
import tempfile

from stau_jax import errors


class OutputError(errors.UserError, ValueError):
  """An output path that cannot be written, or a write that failed."""


def _fsync(path):
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def _new_file_mode():
  """The mode `open(path, 'w')` gives a new file: 0666 less the umask."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path beside `path`; renames it onto `path` when the
  block ends without an error, removes it otherwise.

  Raises OutputError naming `path` when the disk is full or the folder is
  not writable.
  """
  directory = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  suffix = os.path.splitext(base)[1]
  try:
    handle, temporary = tempfile.mkstemp(prefix=f'.{base}.', suffix=f'.tmp{suffix}',
                                         dir=directory)
  except OSError as e:
    raise OutputError(f'Cannot create a file beside the output: {e.strerror}',
                      path, 'check that the folder exists and is writable') from e
  os.close(handle)
  os.chmod(temporary, _new_file_mode())  # mkstemp's 0600 -> what open() gives
  try:
    yield temporary
    _fsync(temporary)
    os.replace(temporary, path)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise OutputError('The disk is full; nothing was written', path,
                        'free some space and run again') from e
    raise
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_bytes(path, data):
  """Writes `data` (bytes) to `path` atomically."""
  with atomic_path(path) as temporary:
    with open(temporary, 'wb') as f:
      f.write(data)


def write_text(path, text):
  """Writes `text` (str, UTF-8) to `path` atomically."""
  write_bytes(path, text.encode('utf-8'))


def check_output_paths(suffixes=None, inputs=None, **paths):
  """Refuses output paths before the work; returns {name: path}.

  Args:
    suffixes: {name: (allowed extensions, lower case, with the dot)}.
    inputs: {flag name: path or None} of the files the command reads; an
      output may not replace one.
    **paths: {flag name: path or None}; None entries are skipped, empty
      ones refused.

  Raises OutputError naming the flag and the path when a path is a
  directory, its folder does not exist or is not writable, two outputs share
  one path, an output is an input, or an extension is not allowed.
  """
  suffixes = suffixes or {}
  for name, path in paths.items():
    if path == '':
      raise OutputError(f'--{name} is empty', None, 'name a file to write')
  given = {name: path for name, path in paths.items() if path}
  read = {os.path.realpath(path): name for name, path in (inputs or {}).items()
          if path}
  seen = {}
  for name, path in given.items():
    where = f'--{name}={path}'
    real = os.path.realpath(path)
    if real in read:
      raise OutputError(f'{where} would overwrite the input --{read[real]}',
                        None, 'write the output to another file')
    if real in seen:
      raise OutputError(f'--{seen[real]} and --{name} name the same file', path,
                        'give each output its own path')
    seen[real] = name
    allowed = suffixes.get(name)
    if allowed and os.path.splitext(path)[1].lower() not in allowed:
      raise OutputError(f'{where} must end with {" or ".join(allowed)}', None,
                        'change the file name')
    if os.path.isdir(path):
      raise OutputError(f'{where} is a directory', None, 'name a file to write')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
      raise OutputError(f'The folder of {where} does not exist', folder,
                        'create it first')
    if not os.access(folder, os.W_OK):
      raise OutputError(f'The folder of {where} is not writable', folder,
                        'choose another path')
  return given
