"""Host memory: keep freed memory for reuse instead of unmapping it (glibc).

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
"""
import ctypes
import os
import platform

ENABLE_VARIABLE = 'STAU_JAX_RETAIN_HOST_MEMORY'
# mallopt parameters and values (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # Heap top kept when freed: with -1 (SIZE_MAX) all.
_M_MMAP_MAX = -4  # Blocks served by mmap at most at once: 0, none.
_M_ARENA_MAX = -8  # Heaps ("arenas") for all threads: 1, the main heap,
# the only one that grows past 64 MB without mmap.
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def retain_freed_memory():
  """Sets glibc's malloc to serve every block from its one main heap and
  never return freed memory to the system.

  Call it before JAX starts its threads (before the first computation): a
  thread that has allocated keeps the heap it had. Does nothing where the C
  library is not glibc.

  Returns:
    True if the settings were applied.
  """
  if platform.libc_ver()[0] != 'glibc':
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all([mallopt(parameter, value) == 1 for parameter, value in _SETTINGS])


def apply_environment():
  """`retain_freed_memory()` where STAU_JAX_RETAIN_HOST_MEMORY=1; returns
  whether it was applied."""
  return (os.environ.get(ENABLE_VARIABLE, '0') == '1'
          and retain_freed_memory())
