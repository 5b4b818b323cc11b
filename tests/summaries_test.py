"""The TensorBoard writer produces files TensorBoard's own reader parses."""
import numpy as np
from tensorboard.backend.event_processing import event_file_loader

from stau_jax import summaries


def test_scalars_and_images_round_trip(tmp_path):
  writer = summaries.SummaryWriter(str(tmp_path))
  writer.scalars({'train/loss': 0.5, 'eval/ssim': 0.25}, step=3)
  writer.image('samples', np.zeros((4, 6, 1), np.uint8), step=3)
  writer.close()
  events = list(event_file_loader.LegacyEventFileLoader(writer.path).Load())
  assert events[0].file_version == 'brain.Event:2'
  values = {v.tag: v for e in events[1:] for v in e.summary.value}
  assert values['train/loss'].simple_value == 0.5
  assert values['eval/ssim'].simple_value == 0.25
  assert (values['samples'].image.height, values['samples'].image.width) == (
      4, 6)
  assert all(e.step == 3 for e in events[1:])
