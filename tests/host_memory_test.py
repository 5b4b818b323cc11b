"""Tests of stau_jax.host_memory: freed memory is reused, not faulted in again."""
import json
import os
import platform
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

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc',
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


def test_every_command_line_program_reads_the_variable(monkeypatch):
  calls = []
  monkeypatch.setattr(cli.signal, 'signal', lambda *args: None)
  monkeypatch.setattr(host_memory, 'apply_environment',
                      lambda: calls.append('environment'))
  monkeypatch.setattr(cli.app, 'run', lambda main, flags_parser: calls.append(
      'main'))
  cli.run(lambda argv: None)
  assert calls == ['environment', 'main']
