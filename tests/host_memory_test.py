"""Tests of stau_jax.host_memory: freed memory is reused, not faulted in again."""
import json
import os
import subprocess
import sys

import pytest

from stau_jax import cli
from stau_jax import host_memory

# In a fresh process: retain_freed_memory() or apply_environment(), then, in the main
# thread and in a new thread (as XLA's workers allocate), malloc and touch a
# 64 MB block twice, freeing it in between; report the page faults of the
# second touch.
_PROGRAM = """
import ctypes, json, resource, sys, threading
from stau_jax import host_memory
applied = {'call': host_memory.retain_freed_memory,
           'environment': host_memory.apply_environment}[sys.argv[1]]()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 64 << 20
def touch():
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  return block
faults = {}
def second_touch_faults(name):
  libc.free(touch())
  before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  block = touch()
  faults[name] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
  libc.free(block)
second_touch_faults('main')
worker = threading.Thread(target=second_touch_faults, args=('worker',))
worker.start()
worker.join()
print(json.dumps({'applied': applied, **faults}))
"""
_PAGES = (64 << 20) // os.sysconf('SC_PAGE_SIZE')

pytestmark = pytest.mark.skipif(host_memory._glibc_version() is None,
                                reason='glibc only')


def _second_touch_faults(how, **environment):
  result = subprocess.run([sys.executable, '-c', _PROGRAM, how],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, **environment})
  return json.loads(result.stdout)


def test_glibc_default_faults_large_blocks_in_again():
  # The premise, and the default: without the variable nothing is set, and
  # a freed 64 MB block is unmapped, so touching a new one faults in every
  # page again.
  faults = _second_touch_faults(
      'environment', **{host_memory.ENABLE_VARIABLE: '0'})
  assert faults['applied'] is False
  assert faults['main'] >= 0.9 * _PAGES
  assert faults['worker'] >= 0.9 * _PAGES


@pytest.mark.parametrize('how, environment', [
    ('call', {}), ('environment', {host_memory.ENABLE_VARIABLE: '1'})])
def test_retained_memory_is_reused_in_every_thread(how, environment):
  faults = _second_touch_faults(how, **environment)
  assert faults['applied'] is True
  assert faults['main'] < 0.01 * _PAGES
  assert faults['worker'] < 0.01 * _PAGES


_HUGE_PAGES_POSSIBLE = ((host_memory._glibc_version() or (0, 0)) >= (2, 35)
                        and host_memory._thp_mode() in ('madvise', 'always'))


@pytest.mark.skipif(not _HUGE_PAGES_POSSIBLE,
                    reason='needs glibc 2.35+ and transparent huge pages')
def test_huge_page_tunable_maps_large_blocks_in_huge_pages():
  # The premise of the restart: under the tunable a fresh 64 MB block faults
  # in 2 MB at a time, not 4 KB.
  faults = _second_touch_faults(
      'environment', GLIBC_TUNABLES=host_memory.HUGE_PAGES_TUNABLE,
      **{host_memory.ENABLE_VARIABLE: '0'})
  assert faults['main'] < 0.1 * _PAGES
  assert faults['worker'] < 0.1 * _PAGES


@pytest.mark.parametrize('environ, glibc, thp, expected', [
    ({}, (2, 36), 'madvise', 'glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, (2, 35), 'madvise',
     'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, (2, 36), 'madvise', None),
    ({'STAU_JAX_HUGE_PAGES': '0'}, (2, 36), 'madvise', None),
    ({}, (2, 34), 'madvise', None),
    ({}, None, 'madvise', None),
    ({}, (2, 36), 'always', None),
    ({}, (2, 36), 'never', None),
    ({}, (2, 36), None, None),
])
def test_huge_pages_environment(environ, glibc, thp, expected):
  environment = host_memory.huge_pages_environment(
      {'PATH': '/bin', **environ}, glibc, thp)
  if expected is None:
    assert environment is None
  else:
    assert environment == {'PATH': '/bin', **environ,
                           'GLIBC_TUNABLES': expected}


@pytest.mark.parametrize('argv0, restarts', [('-m', True),
                                             ('notebook.py', False)])
def test_restart_only_while_python_resolves_a_dash_m_program(
    monkeypatch, argv0, restarts):
  calls = []
  monkeypatch.setattr(sys, 'argv', [argv0, '--config=configs/tiny.py'])
  monkeypatch.setattr(sys, 'orig_argv', [
      'python', '-m', 'stau_jax.main', '--config=configs/tiny.py'])
  monkeypatch.setattr(host_memory, '_glibc_version', lambda: (2, 36))
  monkeypatch.setattr(host_memory, '_thp_mode', lambda: 'madvise')
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv(host_memory.HUGE_PAGES_VARIABLE, raising=False)
  monkeypatch.setattr(host_memory.os, 'execve',
                      lambda *args: calls.append(args))
  host_memory.restart_with_huge_pages()
  if restarts:
    [(executable, argv, environment)] = calls
    assert executable == sys.executable
    assert argv == sys.orig_argv
    assert environment['GLIBC_TUNABLES'] == host_memory.HUGE_PAGES_TUNABLE
  else:
    assert calls == []


def test_every_command_line_program_reads_the_variable(monkeypatch):
  calls = []
  monkeypatch.setattr(cli.signal, 'signal', lambda *args: None)
  monkeypatch.setattr(host_memory, 'apply_environment',
                      lambda: calls.append('environment'))
  monkeypatch.setattr(cli.app, 'run', lambda main, flags_parser: calls.append(
      'main'))
  cli.run(lambda argv: None)
  assert calls == ['environment', 'main']
