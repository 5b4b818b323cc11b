"""Two processes on 127.0.0.1 (gloo CPU collectives) train as one run; a
process that never starts is reported by its id."""
import socket
import subprocess
import sys
import time

import numpy as np

from stau_jax import summaries
from tests import runs

_TRAIN = """
import sys
import jax
import numpy as np
from configs import tiny
from stau_jax import distributed
from stau_jax import summaries
from stau_jax import train
assert distributed.initialize_from_environment()
config = tiny.get_config()
config.update(num_train_steps=6, checkpoint_every_steps=3, eval_every_steps=6,
              log_every_steps=3, num_eval_batches=1)
state = train.train_and_evaluate(config, sys.argv[1])
np.savez(sys.argv[2], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in
                         jax.tree_util.tree_flatten_with_path(state.params)[0]})
print('process', jax.process_index(), 'of', jax.process_count())
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_end_with_identical_parameters(tmp_path):
  workdir = str(tmp_path / 'run')
  address = f'127.0.0.1:{_free_port()}'
  processes = [
      subprocess.Popen(
          [sys.executable, '-c', _TRAIN, workdir, str(tmp_path / f'{i}.npz')],
          env=runs.environment(JAX_COORDINATOR_ADDRESS=address,
                               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)),
          cwd=runs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for i, (process, (stdout, stderr)) in enumerate(zip(processes, outputs)):
    assert process.returncode == 0, stderr[-5000:]
    assert f'process {i} of 2' in stdout
  first, second = (np.load(tmp_path / f'{i}.npz') for i in range(2))
  assert set(first) == set(second)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  assert [r['step'] for r in summaries.read_losses(workdir)] == list(range(1, 7))


def test_a_missing_process_is_named_after_the_timeout(tmp_path):
  # Process 0 of 3 waits for 1 and 2, of which only 2 starts; a process 1 of
  # 2 alone waits for process 0. Both give up after STAU_INIT_TIMEOUT.
  port, lone_port = _free_port(), _free_port()
  commands = {
      0: (port, '3', '0'), 2: (port, '3', '2'), 'lone': (lone_port, '2', '1')}
  processes = {
      name: subprocess.Popen(
          [sys.executable, *runs.train_args(str(tmp_path / 'run'))],
          env=runs.environment(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{p}',
                               JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=i,
                               STAU_INIT_TIMEOUT='8'),
          cwd=runs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True) for name, (p, n, i) in commands.items()}
  start = time.time()
  errors = {name: p.communicate(timeout=120)[1]
            for name, p in processes.items()}
  assert time.time() - start < 60
  for name, process in processes.items():
    assert process.returncode == 1, errors[name][-3000:]
    assert 'Traceback' not in errors[name]
  assert 'waiting up to 8 s (STAU_INIT_TIMEOUT) for processes 1, 2' in (
      errors[0])
  assert errors[0].splitlines()[-1] == (
      f'error: Process(es) 1 of 3 did not join within 8 s (coordinator port '
      f'{port}): start them with the same JAX_COORDINATOR_ADDRESS, or raise '
      f'STAU_INIT_TIMEOUT')
  assert errors[2].splitlines()[-1].startswith(
      f'error: Process(es) 1 did not join within 8 s (127.0.0.1:{port})')
  assert errors['lone'].splitlines()[-1].startswith(
      f'error: Process 0 did not open the coordinator within 8 s '
      f'(127.0.0.1:{lone_port})')
