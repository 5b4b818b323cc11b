"""Several devices and hosts: `jax.distributed.initialize` from environment
variables, and replicating host pytrees for the pmapped steps.

Each host runs the same command (`python -m stau_jax.main ...`) with the same
--workdir on a shared file system. Hosts are joined when

* JAX_COORDINATOR_ADDRESS=host:port is set (the address of process 0), with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) unless the
  cluster provides them (SLURM, Open MPI); or
* the job runs under SLURM or Open MPI with more than one task, or
  STAU_DISTRIBUTED=1 is set (e.g. on a Cloud TPU pod slice): then
  `jax.distributed.initialize()` detects everything itself.

Otherwise the run uses the local devices only. CPU hosts talk through gloo.

All processes must join within STAU_INIT_TIMEOUT seconds (default 300). With
an explicit JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID,
the processes first meet at the coordinator's port (`rendezvous`), so a
process that never starts is reported by its id instead of jax aborting.
"""
import os
import socket
import time

from absl import logging
import jax
import numpy as np

from stau_jax import errors

INIT_TIMEOUT_VARIABLE = 'STAU_INIT_TIMEOUT'
DEFAULT_INIT_TIMEOUT = 300
_WAIT_LOG_EVERY_SECS = 10


def _int_from_environment(name):
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'Environment variable {name}={value!r} must be an '
                     f'integer.') from None


def _split_address(address):
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'JAX_COORDINATOR_ADDRESS={address!r} must be host:port.')
  return host.strip('[]'), int(port)


def _missing(joined, num_processes):
  return ', '.join(str(i) for i in range(1, num_processes)
                   if i not in joined) or 'none'


def _coordinate(port, num_processes, timeout):
  """Process 0's side of `rendezvous`: waits for processes 1..N-1."""
  family = (socket.AF_INET6 if socket.has_dualstack_ipv6() else
            socket.AF_INET)
  server = socket.create_server(('', port), family=family,
                                dualstack_ipv6=family == socket.AF_INET6)
  joined = {}
  deadline = last_log = time.time()
  deadline += timeout
  try:
    while len(joined) < num_processes - 1 and time.time() < deadline:
      if time.time() - last_log >= _WAIT_LOG_EVERY_SECS:
        last_log = time.time()
        logging.info('Still waiting for process(es) %s (%.0f s left).',
                     _missing(joined, num_processes), deadline - time.time())
      server.settimeout(min(1.0, max(deadline - time.time(), 0.01)))
      try:
        connection, _ = server.accept()
      except socket.timeout:
        continue
      connection.settimeout(max(deadline - time.time(), 1.0))
      try:
        line = connection.makefile().readline().strip()
      except OSError:
        connection.close()
        continue
      index = int(line) if line.isdigit() else -1
      if not 0 < index < num_processes or index in joined:
        connection.sendall(f'refused process id {line!r}\n'.encode())
        connection.close()
        continue
      joined[index] = connection
      logging.info('Process %d joined.', index)
    missing = _missing(joined, num_processes)
    reply = 'go' if len(joined) == num_processes - 1 else f'missing {missing}'
    for connection in joined.values():
      try:
        connection.sendall(f'{reply}\n'.encode())
        connection.settimeout(5)
        connection.recv(1)  # the process closes first: the port stays free
      except OSError:
        pass
  finally:
    for connection in joined.values():
      connection.close()
    server.close()
  if reply != 'go':
    raise errors.JoinError(
        f'Process(es) {missing} of {num_processes} did not join within '
        f'{timeout} s', f'coordinator port {port}',
        f'start them with the same JAX_COORDINATOR_ADDRESS, or raise '
        f'{INIT_TIMEOUT_VARIABLE}')


def _join(host, port, process_id, timeout):
  """Process i > 0's side of `rendezvous`."""
  address = f'{host}:{port}'
  deadline = last_log = time.time()
  deadline += timeout
  while True:
    try:
      connection = socket.create_connection(
          (host, port), timeout=max(deadline - time.time(), 0.01))
      break
    except OSError:
      if time.time() >= deadline:
        raise errors.JoinError(
            f'Process 0 did not open the coordinator within {timeout} s',
            address, f'start process 0 there, check the address, or raise '
            f'{INIT_TIMEOUT_VARIABLE}') from None
      if time.time() - last_log >= _WAIT_LOG_EVERY_SECS:
        last_log = time.time()
        logging.info('Still waiting for process 0 at %s (%.0f s left).',
                     address, deadline - time.time())
      time.sleep(0.2)
  with connection:
    connection.sendall(f'{process_id}\n'.encode())
    connection.settimeout(max(deadline - time.time(), 0) + 10)
    try:
      reply = connection.makefile().readline().strip()
    except OSError:
      reply = ''
  if reply == 'go':
    return
  if reply.startswith('missing '):
    raise errors.JoinError(
        f'Process(es) {reply[len("missing "):]} did not join within '
        f'{timeout} s', address, f'start them, or raise '
        f'{INIT_TIMEOUT_VARIABLE}')
  raise errors.JoinError(
      f'The coordinator {reply or "closed the connection"} (this is process '
      f'{process_id})', address, 'give every process its own JAX_PROCESS_ID '
      'in 0 .. JAX_NUM_PROCESSES-1')


def rendezvous(address, num_processes, process_id, timeout):
  """Waits until all processes reach the coordinator's port.

  Process 0 listens on the port of `address` (before jax's own service
  takes it) until processes 1..N-1 have connected; then everyone goes on.

  Raises:
    errors.JoinError: after `timeout` seconds, naming the processes that did
      not join (or, on processes > 0, saying that process 0 did not).
  """
  host, port = _split_address(address)
  if process_id == 0:
    logging.info('Process 0 of %d: waiting up to %d s (%s) for processes %s '
                 'to join at port %d.', num_processes, timeout,
                 INIT_TIMEOUT_VARIABLE, _missing({}, num_processes), port)
    _coordinate(port, num_processes, timeout)
  else:
    logging.info('Process %d of %d: joining process 0 at %s, waiting up to '
                 '%d s (%s).', process_id, num_processes, address, timeout,
                 INIT_TIMEOUT_VARIABLE)
    _join(host, port, process_id, timeout)


def initialize_from_environment():
  """Calls jax.distributed.initialize if the environment asks for several hosts.

  Returns:
    True if it initialized a multi-host run.

  Raises:
    errors.JoinError: not all processes joined within STAU_INIT_TIMEOUT s.
  """
  coordinator = os.environ.get('JAX_COORDINATOR_ADDRESS')
  cluster_tasks = max(_int_from_environment('SLURM_NTASKS') or 1,
                      _int_from_environment('OMPI_COMM_WORLD_SIZE') or 1)
  if not (coordinator or cluster_tasks > 1 or
          os.environ.get('STAU_DISTRIBUTED') == '1'):
    return False
  timeout = _int_from_environment(INIT_TIMEOUT_VARIABLE)
  timeout = DEFAULT_INIT_TIMEOUT if timeout is None else timeout
  if timeout < 1:
    raise ValueError(f'{INIT_TIMEOUT_VARIABLE}={timeout} must be a positive '
                     'number of seconds.')
  num_processes = _int_from_environment('JAX_NUM_PROCESSES')
  process_id = _int_from_environment('JAX_PROCESS_ID')
  if coordinator and num_processes and process_id is not None:
    if not 0 <= process_id < num_processes:
      raise ValueError(f'JAX_PROCESS_ID={process_id} must be in 0 .. '
                       f'JAX_NUM_PROCESSES-1 = {num_processes - 1}.')
    if num_processes > 1:
      rendezvous(coordinator, num_processes, process_id, timeout)
  else:
    logging.info('Waiting up to %d s (%s) for the cluster\'s processes to '
                 'join.', timeout, INIT_TIMEOUT_VARIABLE)
  jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes,
      process_id=process_id, initialization_timeout=timeout)
  logging.info('Process %d of %d; %d local and %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def replicate(tree):
  """Copies a host pytree to every local device for the pmapped steps.

  Unlike flax.jax_utils.replicate, the copies carry the sharding of pmap
  outputs (axis 'batch'), so the train step compiles once, not twice.
  """
  num_devices = jax.local_device_count()
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(x, (num_devices,) + np.shape(x)), tree)
  return jax.pmap(lambda x: x, axis_name='batch')(stacked)


def host_shard(batch):
  """This host's rows of a global batch, split over its devices, for pmap.

  batch: pytree of arrays (B, ...) that every host holds whole (evaluation
  batches). Returns the same tree of (local devices, B // all devices, ...):
  host i takes rows [i B / hosts, (i + 1) B / hosts). Raises ValueError when
  B does not split over all devices of all hosts.
  """
  num_devices, process_count = jax.local_device_count(), jax.process_count()
  size = len(jax.tree_util.tree_leaves(batch)[0])
  if size % (num_devices * process_count):
    raise ValueError(
        f'Evaluation batch size {size} is not divisible by the '
        f'{num_devices * process_count} devices of all hosts; use a multiple '
        'of it.')
  host_size = size // process_count
  start = jax.process_index() * host_size
  return jax.tree_util.tree_map(
      lambda x: x[start:start + host_size].reshape(
          (num_devices, -1) + x.shape[1:]), batch)
