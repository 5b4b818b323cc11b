"""The launch/ scripts: syntax, two hosts on 127.0.0.1, one 'GPU' on the CPU,
and the commands the SLURM and TPU VM scripts hand to srun and gcloud."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from stau_jax import summaries
from tests import multihost_test
from tests import runs

LAUNCH = os.path.join(runs.REPO, 'launch')
SCRIPTS = sorted(os.listdir(LAUNCH))
SHORT_RUN = ('--config.num_train_steps=4', '--config.log_every_steps=2',
             '--config.checkpoint_every_steps=4',
             '--config.eval_every_steps=1000', '--config.num_eval_batches=1')


def _launch(script, *args, **variables):
  """Starts launch/SCRIPT ARGS with the test's python; returns the Popen."""
  env = runs.environment(PYTHON=sys.executable, **variables)
  return subprocess.Popen(['bash', os.path.join(LAUNCH, script), *args],
                          env=env, cwd=runs.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _losses(log):
  return re.findall(r'step (\d+)/\d+ \| loss ([0-9.]+)', log)


def test_scripts_are_valid_bash_and_need_config_and_workdir():
  assert SCRIPTS == ['gpu_all.sh', 'gpu_single.sh', 'multihost.sh',
                     'slurm.sbatch', 'tpu_vm.sh']
  for script in SCRIPTS:
    path = os.path.join(LAUNCH, script)
    subprocess.run(['bash', '-n', path], check=True)
    with open(path) as f:
      assert 'set -euo pipefail' in f.read(), script
    process = _launch(script, 'configs/tiny.py')
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2 and 'usage:' in stderr, script


def test_multihost_script_as_two_local_processes(tmp_path):
  workdir = str(tmp_path / 'run')
  port = multihost_test._free_port()  # pylint: disable=protected-access
  address = f'127.0.0.1:{port}'
  processes = [_launch('multihost.sh', runs.TINY_CONFIG, workdir, address, '2',
                       str(i), *SHORT_RUN) for i in range(2)]
  logs = []
  for i, process in enumerate(processes):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-5000:]
    assert f'Process {i} of 2' in stderr
    assert 'Training on 2 devices (1 local) in 2 process(es)' in stderr
    logs.append(stderr)
  assert _losses(logs[0]) == _losses(logs[1])
  # A progress line for the first step, then every log_every_steps.
  assert [s for s, _ in _losses(logs[0])] == ['1', '2', '4']
  assert [r['step'] for r in summaries.read_losses(workdir)] == [1, 2, 3, 4]
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['4']


def test_gpu_single_script_trains_on_the_cpu(tmp_path):
  workdir = str(tmp_path / 'run')
  process = _launch('gpu_single.sh', runs.TINY_CONFIG, workdir, *SHORT_RUN,
                    GPU='0')
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-5000:]
  assert 'step 4/4 | loss' in stderr
  assert 'Evaluation at step 4' in stderr
  assert [r['step'] for r in summaries.read_losses(workdir)] == [1, 2, 3, 4]


@pytest.fixture
def recording_bin(tmp_path):
  """A bin/ with `srun` and `gcloud` that write their arguments to a file."""
  directory = tmp_path / 'bin'
  directory.mkdir()
  for name in ('srun', 'gcloud'):
    path = directory / name
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > '
                    f'{shlex.quote(str(tmp_path / name))}.args\n')
    path.chmod(0o755)
  return directory


def _run_recorded(tmp_path, recording_bin, script, *args, **variables):
  process = _launch(script, *args,
                    PATH=f'{recording_bin}:{os.environ["PATH"]}', **variables)
  _, stderr = process.communicate(timeout=30)
  assert process.returncode == 0, stderr
  name = 'srun' if script.startswith('slurm') else 'gcloud'
  return (tmp_path / f'{name}.args').read_text().splitlines()


def test_slurm_script_runs_main_under_srun(tmp_path, recording_bin):
  args = _run_recorded(tmp_path, recording_bin, 'slurm.sbatch',
                       'configs/mmnist.py', '/shared/run',
                       '--config.batch_size=32')
  assert args == [sys.executable, '-m', 'stau_jax.main',
                  '--config=configs/mmnist.py', '--workdir=/shared/run',
                  '--config.batch_size=32']


def test_tpu_vm_script_runs_main_on_every_worker(tmp_path, recording_bin):
  args = _run_recorded(tmp_path, recording_bin, 'tpu_vm.sh',
                       'configs/mmnist.py', 'runs/my run',
                       '--config.name=a b', TPU_NAME='tpu-1',
                       ZONE='us-central2-b')
  assert args[:6] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'tpu-1',
                      '--zone=us-central2-b']
  assert '--worker=all' in args
  command = next(a for a in args if a.startswith('--command='))
  remote = shlex.split(command[len('--command='):].split('&&', 1)[1])
  assert remote == ['STAU_DISTRIBUTED=1', 'python3', '-m', 'stau_jax.main',
                    '--config=configs/mmnist.py', '--workdir=runs/my run',
                    '--config.name=a b']
