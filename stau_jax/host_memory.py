"""Host memory: fewer page faults for XLA:CPU's large temporaries (glibc).

XLA:CPU allocates a call's temporaries as one block (1.5 GB for a
configs/mmnist.py training step at batch 8) and frees it when the call
returns. glibc serves blocks that large with a fresh mmap and unmaps them
on free, so every call faults in and zero-fills all of its pages again
(375,000 page faults and about 0.7 s of kernel time per training step).
`retain_freed_memory` makes glibc serve large blocks from its heap, for
every thread, and keep what is freed, as tcmalloc and jemalloc do: later
calls reuse the same pages. The price is resident memory: the heap keeps its
peak, and small blocks placed inside a freed temporary block make the next
one go above it, so the process holds two to three temporary blocks
(mmnist, batch 8, bf16: 0.30 instead of 0.28 training steps/s, 6.8 instead
of 2.4 GB resident; docs/speed.md). So it is opt-in:
STAU_JAX_RETAIN_HOST_MEMORY=1 in the environment of any `python -m
stau_jax.X` program (cli.run calls `apply_environment`), or
`retain_freed_memory()` in a notebook before JAX runs anything.

Huge pages, the default for programs: each call still maps its temporaries
afresh, but in 2 MB pages, 512 times fewer faults (mmnist, batch 8: float32
training steps 4.74 -> 4.40 s, resident memory unchanged). glibc asks the
kernel for transparent huge pages only under its `glibc.malloc.hugetlb=1`
tunable, read at process start, so `python -m stau_jax.X` restarts itself
once with it (`restart_with_huge_pages`, from the package's __init__ before
anything heavy is imported) where the kernel gives huge pages on request
(transparent_hugepage 'madvise'). STAU_JAX_HUGE_PAGES=0 turns it off; in a
notebook, start Python with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. With
huge pages, retaining freed memory no longer pays; it stays for kernels
without transparent huge pages.
"""
import ctypes
import os
import sys

ENABLE_VARIABLE = 'STAU_JAX_RETAIN_HOST_MEMORY'
HUGE_PAGES_VARIABLE = 'STAU_JAX_HUGE_PAGES'
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
# mallopt parameters and values (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # Heap top kept when freed: with -1 (SIZE_MAX) all.
_M_MMAP_MAX = -4  # Blocks served by mmap at most at once: 0, none.
_M_ARENA_MAX = -8  # Heaps ("arenas") for all threads: 1, the main heap,
# the only one that grows past 64 MB without mmap.
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def _glibc_version():
  """(major, minor) of the running glibc, or None."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  return tuple(int(part) for part in version.split('.')[:2])


def retain_freed_memory():
  """Sets glibc's malloc to serve every block from its one main heap and
  never return freed memory to the system.

  Call it before JAX starts its threads (before the first computation): a
  thread that has allocated keeps the heap it had. Does nothing where the C
  library is not glibc.

  Returns:
    True if the settings were applied.
  """
  if _glibc_version() is None:
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all([mallopt(parameter, value) == 1 for parameter, value in _SETTINGS])


def apply_environment():
  """`retain_freed_memory()` where STAU_JAX_RETAIN_HOST_MEMORY=1; returns
  whether it was applied."""
  return (os.environ.get(ENABLE_VARIABLE, '0') == '1'
          and retain_freed_memory())


def huge_pages_enabled(environ=os.environ):
  """Whether glibc's huge-page tunable is in the environment (as it was at
  this process's start, for the current process)."""
  return HUGE_PAGES_TUNABLE in environ.get('GLIBC_TUNABLES', '').split(':')


def _thp_mode():
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'),
  or None where it has none."""
  try:
    with open(_THP_MODE_FILE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def huge_pages_environment(environ, glibc_version, thp_mode):
  """The environment to restart a program in so that glibc maps large blocks
  in huge pages, or None where that would change nothing: not glibc 2.35+
  (the first with the tunable), a kernel that gives huge pages always or
  never (only 'madvise' waits for glibc's request), the tunable already
  there, or STAU_JAX_HUGE_PAGES=0."""
  if (glibc_version is None or glibc_version < (2, 35)
      or thp_mode != 'madvise' or huge_pages_enabled(environ)
      or environ.get(HUGE_PAGES_VARIABLE, '1') == '0'):
    return None
  tunables = environ.get('GLIBC_TUNABLES')
  return {**environ, 'GLIBC_TUNABLES': (
      f'{tunables}:{HUGE_PAGES_TUNABLE}' if tunables else HUGE_PAGES_TUNABLE)}


def restart_with_huge_pages():
  """Replaces the process by itself, same command line, with glibc's
  huge-page tunable, when Python is resolving a `python -m stau_jax...`
  program (sys.argv[0] is '-m' only then) and `huge_pages_environment`
  says so. Never in a notebook or any importing program."""
  if (sys.argv[:1] != ['-m'] or not getattr(sys, 'orig_argv', None)
      or not sys.executable):
    return
  environment = huge_pages_environment(os.environ, _glibc_version(),
                                       _thp_mode())
  if environment is None:
    return
  try:
    os.execve(sys.executable, sys.orig_argv, environment)
  except OSError:
    return
