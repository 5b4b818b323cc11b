"""The errors a user can cause, in one place.

Each is a `UserError`: the command-line programs (`stau_jax.cli.run`) print
it as one line, `error: <what> (<file>): <what to do>`, and exit non-zero,
instead of a traceback. Raise them with the three parts when they are known:

  raise errors.ExportError('Not a stau_jax export file', path,
                           'pass a file written by stau_jax.export')

or with one finished sentence, as `CheckpointError(message)`.
"""
import os


def not_a_file(path):
  """Why `path` cannot be read as a file: 'is a directory' or 'does not
  exist'."""
  return 'is a directory' if os.path.isdir(path) else 'does not exist'


class UserError(Exception):
  """A problem with the user's input, files or settings, not a bug.

  Attributes:
    what: what is wrong.
    path: the file or directory concerned, or None.
    hint: what to do about it, or None.
  """

  def __init__(self, what, path=None, hint=None):
    self.what, self.path, self.hint = what, path, hint
    message = what + (f' ({path})' if path else '') + (f': {hint}' if hint
                                                       else '')
    super().__init__(message)


class CheckpointError(UserError, RuntimeError):
  """A checkpoint or workdir that cannot be resumed from safely."""


class WorkdirBusyError(CheckpointError):
  """Another process is training in the workdir."""


class ExportError(UserError, ValueError):
  """An export file that is missing, corrupt or does not fit its config."""


class JoinError(UserError, RuntimeError):
  """Processes of a multi-host run that did not join in time."""


class InputError(UserError, ValueError):
  """An input file or setting (frames, a PyTorch checkpoint, a size) that
  cannot be used."""


class TrainingStopped(UserError, RuntimeError):
  """A training run stopped from outside (Ctrl-C, SIGTERM, a full disk); the
  message names the checkpoint it resumes from."""


class MissingPackageError(UserError, ImportError):
  """An optional package a feature needs is not installed (the message
  names the pip command)."""
