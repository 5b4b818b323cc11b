"""Tests for stau_jax.distributed: when hosts are joined, and replication."""
import jax
import numpy as np
import pytest

from stau_jax import distributed

_VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
              'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'STAU_DISTRIBUTED',
              'STAU_INIT_TIMEOUT')


@pytest.fixture
def initialize_calls(monkeypatch):
  """Clears the cluster variables and records jax.distributed.initialize calls."""
  for name in _VARIABLES:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(distributed, 'rendezvous',
                      lambda *args: calls.append(('rendezvous',) + args))
  return calls


def test_a_single_host_is_left_alone(initialize_calls, monkeypatch):
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert not distributed.initialize_from_environment()
  assert not initialize_calls


def test_coordinator_variables_are_passed_as_integers(initialize_calls,
                                                      monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'host0:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  monkeypatch.setenv('STAU_INIT_TIMEOUT', '20')
  assert distributed.initialize_from_environment()
  assert initialize_calls == [
      ('rendezvous', 'host0:1234', 2, 1, 20),
      dict(coordinator_address='host0:1234', num_processes=2, process_id=1,
           initialization_timeout=20)]


@pytest.mark.parametrize('name, value', [
    ('SLURM_NTASKS', '4'), ('OMPI_COMM_WORLD_SIZE', '2'),
    ('STAU_DISTRIBUTED', '1')])
def test_clusters_let_jax_detect_everything(initialize_calls, monkeypatch,
                                            name, value):
  monkeypatch.setenv(name, value)
  assert distributed.initialize_from_environment()
  assert initialize_calls == [dict(coordinator_address=None,
                                   num_processes=None, process_id=None,
                                   initialization_timeout=300)]


def test_a_non_integer_variable_is_a_clear_error(initialize_calls,
                                                 monkeypatch):
  monkeypatch.setenv('SLURM_NTASKS', 'four')
  with pytest.raises(ValueError, match="SLURM_NTASKS='four' must be an "
                                       'integer'):
    distributed.initialize_from_environment()
  assert not initialize_calls


def test_replicate_puts_a_copy_on_every_local_device():
  tree = {'w': np.arange(6.0).reshape(2, 3), 'step': np.int32(5)}
  replicated = distributed.replicate(tree)
  assert replicated['w'].shape == (jax.local_device_count(), 2, 3)
  for copy in replicated['w']:
    np.testing.assert_array_equal(copy, tree['w'])
  np.testing.assert_array_equal(replicated['step'], 5)


def test_host_shard_takes_this_hosts_rows_split_over_its_devices(monkeypatch):
  monkeypatch.setattr(jax, 'local_device_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  frames = np.arange(12 * 2).reshape(12, 2)
  shard = distributed.host_shard({'frames': frames, 'valid': frames[:, 0] > 9})
  np.testing.assert_array_equal(shard['frames'],
                                frames[4:8].reshape(2, 2, 2))
  np.testing.assert_array_equal(shard['valid'], [[False, True],
                                                 [True, True]])
  with pytest.raises(ValueError, match=r'batch size 9 is not divisible by the '
                     r'6 devices of all hosts; use a multiple of it'):
    distributed.host_shard(frames[:9])
