r"""Times the authors' PyTorch STAU model, for side-by-side speed comparisons.

  python tools/torch_reference_step.py --reference=PATH/TO/STAU \
      --device=cuda --batch_size=16 --steps=20 [--autocast=bf16]

PATH/TO/STAU is a checkout of the authors' repository (ZhengChang467/STAU;
its `core` package is imported at run time, nothing of it ships here). The
model is the paper's Moving MNIST one (4 layers x 64 hidden, 5x5 filters,
tau 5, 64x64x1 frames downsampled 4x, 10 -> 10 frames), built as the
authors' training script builds it. After one warm-up call each, times
--steps calls of a training step (forward over 20 frames, MSE loss,
backward, Adam) and of the forward pass, synchronising the device around
every call, the way `python -m stau_jax.benchmark` times ours.
`--autocast=bf16` runs the model under torch.autocast (bfloat16 compute,
float32 parameters): the authors' code has no mixed precision, so this is
the fairest PyTorch counterpart of our `half_precision`. Prints one JSON
line with train_step_s and forward_s (medians), samples_per_s,
peak_device_mb and the settings.
"""
import argparse
import json
import os
import statistics
import sys
import time
import types


def parse_args(argv=None):
  """Command-line options (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--reference', required=True,
                      help="checkout of the authors' STAU repository")
  parser.add_argument('--device', default='cpu', help='cpu | cuda')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--autocast', choices=('none', 'bf16'), default='none')
  return parser.parse_args(argv)


def median_seconds(fn, steps, synchronize):
  """Median wall time of `steps` calls of fn() after one warm-up call."""
  fn()
  synchronize()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    synchronize()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  args = parse_args(argv)
  if not os.path.isfile(os.path.join(args.reference, 'core', 'models',
                                     'STAU.py')):
    raise SystemExit(f'--reference={args.reference} is not a checkout of the '
                     f"authors' STAU repository (no core/models/STAU.py); "
                     f'clone github.com/ZhengChang467/STAU and pass its path.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise SystemExit('Timing the authors\' model needs PyTorch: pip install '
                     '-e ".[torch]".') from error
  sys.path.insert(0, args.reference)
  from core.models import STAU  # pylint: disable=g-import-not-at-top
  device = torch.device(args.device)
  configs = types.SimpleNamespace(
      patch_size=1, img_channel=1, img_width=64, img_height=64, sr_size=4,
      tau=5, cell_mode='normal', model_mode='normal', filter_size=(5, 5),
      stride=1, total_length=20, input_length=10, device=device)
  torch.manual_seed(0)
  network = STAU.RNN(4, [64] * 4, configs).to(device)
  optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
  frames = torch.rand(args.batch_size, 20, 1, 64, 64, device=device)
  mask = torch.zeros(args.batch_size, 9, 64, 64, 1, device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=args.autocast == 'bf16')

  def train_step():
    optimizer.zero_grad()
    with autocast:
      predictions = network(frames, mask)
      loss = ((predictions.float() - frames[:, 1:]) ** 2).mean()
    loss.backward()
    optimizer.step()

  def forward():
    with torch.no_grad(), autocast:
      network(frames, mask)

  synchronize = (torch.cuda.synchronize if device.type == 'cuda'
                 else lambda: None)
  train_step_s = median_seconds(train_step, args.steps, synchronize)
  forward_s = median_seconds(forward, args.steps, synchronize)
  peak_device_mb = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    if device.type == 'cuda' else None)
  print(json.dumps({
      'impl': 'authors-pytorch', 'torch': torch.__version__,
      'device': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                 else f'cpu ({torch.get_num_threads()} threads)'),
      'autocast': args.autocast, 'batch_size': args.batch_size,
      'steps': args.steps,
      'params': sum(p.numel() for p in network.parameters()),
      'train_step_s': round(train_step_s, 5), 'forward_s': round(forward_s, 5),
      'samples_per_s': round(args.batch_size / train_step_s, 3),
      'peak_device_mb': peak_device_mb}))


if __name__ == '__main__':
  main()
