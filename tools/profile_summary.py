r"""Where a training step's time goes, from a `benchmark --profile_dir` trace.

  python -m stau_jax.benchmark --config=configs/mmnist.py --config.batch_size=8 \
      --steps=1 --profile_dir=/tmp/stau_trace
  python tools/profile_summary.py /tmp/stau_trace --steps=3

Reads the newest perfetto_trace.json.gz under the folder and prints, per
training step, the wall time, how busy XLA:CPU's worker threads were, and
the time of the ops on them by kind (oneDNN's convolutions, XLA's matmuls
and convolutions, data movement, elementwise fusions, loops), with the call
counts. A oneDNN call's time is that of the XLA thread waiting on it (oneDNN
runs it on its own OpenMP threads as well).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

# Events that hold other ops (loops, thunk sequences) or mark regions.
CONTAINERS = re.compile(r'ThunkExecutor|ThreadpoolListener|end: |while|'
                        r'conditional|call')
# Op-name patterns -> kind, first match wins (names as XLA:CPU's thunks).
KINDS = (
    ('oneDNN convolutions', r'ffi_call'),
    ('matmul / conv', r'dot|conv|ynn_fusion|xnn_fusion|onednn|custom-call'),
    ('zero-fill broadcasts', r'broadcast'),
    ('dynamic-update-slice', r'dynamic-update-slice'),
    ('dynamic-slice', r'dynamic-slice'),
    ('slices', r'slice'),
    ('copies / transposes', r'copy|transpose'),
    ('pads / concatenates', r'pad|concatenate'),
    ('elementwise fusions', r'fusion|add|multiply|divide|exp|tanh|logistic'),
)


def summarize(trace_dir, steps):
  """{'step_s', 'busy', 'kinds': {kind: (seconds, calls)}} per step."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**',
                                        'perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {trace_dir}')
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  names = {(e['pid'], e['tid']): e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  workers = {key for key, name in names.items() if 'XLAEigen' in name}
  ops = [e for e in events if e.get('ph') == 'X'
         and (e['pid'], e['tid']) in workers
         and not CONTAINERS.match(e['name'])]
  calls = [e for e in events if e.get('ph') == 'X'
           and 'block_until_ready' in e['name']]
  wall = sum(e['dur'] for e in calls) / 1e6 / steps
  kinds = collections.defaultdict(lambda: [0.0, 0])
  for e in ops:
    name = re.sub(r'[._]?\d+$', '', e['name'])
    kind = next((k for k, pattern in KINDS if re.search(pattern, name)),
                'other')
    kinds[kind][0] += e['dur'] / 1e6 / steps
    kinds[kind][1] += 1 / steps
  busy = sum(seconds for seconds, _ in kinds.values())
  return {'step_s': wall, 'threads': len(workers),
          'busy': busy / (wall * max(len(workers), 1)), 'kinds': dict(kinds)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('trace_dir')
  parser.add_argument('--steps', type=int, default=3,
                      help='training steps in the trace (benchmark: 3)')
  args = parser.parse_args(argv)
  try:
    result = summarize(args.trace_dir, args.steps)
  except (OSError, ValueError) as e:
    sys.exit(f'error: {e}')
  print(f"step {result['step_s']:.2f} s; {result['threads']} worker threads "
        f"busy {100 * result['busy']:.0f}% of it")
  for kind, (seconds, calls) in sorted(result['kinds'].items(),
                                      key=lambda item: -item[1][0]):
    print(f'  {kind:<24}{seconds:7.2f} s  {calls:7.0f} ops')


if __name__ == '__main__':
  main()
