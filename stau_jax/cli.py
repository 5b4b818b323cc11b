"""Running a command-line program: errors a user can cause as one line.

Every `python -m stau_jax.X` program ends with

  if __name__ == '__main__':
    cli.run(main, define_flags)    # or cli.run(main): flags defined at import

`run(main, define_flags)` calls `define_flags()` and then
`absl.app.run(main)`, except that the errors a user can cause (`USER_ERRORS`:
`errors.UserError` such as CheckpointError and ExportError, ValueError from
validating settings and files, OSError for missing or unreadable files,
EOFError for truncated ones, FloatingPointError for a diverged run,
app.UsageError for bad arguments) print one line on stderr,

  error: <what> (<file>): <what to do>

and exit with status 1, as do bad flag values (`error: flag --x=...: ...`).
Raise `errors.UserError` subclasses with (what, file, what to do) to get
all three parts. Any other exception is a bug and keeps its traceback;
`--verbosity=1` (or -v 1) shows the traceback of user errors too.
"""
import functools
import logging as std_logging
import sys

from absl import app
from absl import flags

from stau_jax import errors

USER_ERRORS = (errors.UserError, ValueError, OSError, EOFError,
               FloatingPointError, app.UsageError)


def drop_orbax_info(record):
  """Keeps orbax's per-save INFO lines out of the progress log (a filter for
  logging.get_absl_handler())."""
  return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def describe(error):
  """The one-line message of a user error (without the 'error: ' prefix)."""
  if isinstance(error, OSError) and not isinstance(error, errors.UserError):
    if error.filename is not None:
      return (f'{error.strerror or type(error).__name__} ({error.filename}): '
              'check the path, its permissions and the free space')
  message = ' '.join((str(error) or type(error).__name__).split())
  if isinstance(error, app.UsageError):
    message = message.rstrip('.') + ': see --helpshort'
  return message


def _guarded(function, *args):
  try:
    return function(*args)
  except USER_ERRORS as e:
    if flags.FLAGS['verbosity'].value >= 1:  # readable before flag parsing
      raise
    print(f'error: {describe(e)}', file=sys.stderr, flush=True)
    sys.exit(1)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag value as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}: see --helpshort', file=sys.stderr, flush=True)
    sys.exit(1)


def run(main, define_flags=None):
  """Runs `define_flags()`, then `main(argv)` under absl.app.run, with user
  errors as one line (config_flags reads --config overrides while defining
  its flag, so a bad override already fails in `define_flags`)."""
  if define_flags is not None:
    _guarded(define_flags)
  app.run(functools.partial(_guarded, main), flags_parser=_parse_flags)
