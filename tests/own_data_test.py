"""docs/datasets.md "Your own data": its commands, run as written on a folder
of generated 16x16 videos, with tiny overrides so training takes seconds."""
import json
import os
import re
import shlex
import time

import numpy as np
from PIL import Image
import pytest

from tests import runs
from tests.videos import video_frames
from tests.videos import write_video

pytest.importorskip('tensorflow')

DOC = os.path.join(runs.REPO, 'docs', 'datasets.md')
# A CPU-sized model and run (configs/tiny.py's sizes) for the training command.
TINY_OVERRIDES = (
    '--config.data.image_size=(16, 16)', '--config.data.input_length=2',
    '--config.data.total_length=4', '--config.model.num_layers=2',
    '--config.model.num_hidden=8', '--config.model.filter_size=3',
    '--config.model.tau=2', '--config.model.theta=2',
    '--config.model.num_downsample=1', '--config.batch_size=2',
    '--config.eval_batch_size=2', '--config.num_train_steps=4',
    '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
    '--config.log_every_steps=2')


def documented_commands():
  """The `python -m stau_jax...` lines of the "Your own data" section."""
  with open(DOC) as f:
    section = f.read().split('## Your own data')[1].split('\n## ')[0]
  return re.findall(r'^python -m stau_jax\.\S+.*$', section, re.MULTILINE)


def test_the_documented_commands_train_evaluate_predict_and_draw(tmp_path):
  commands = documented_commands()
  assert [shlex.split(c)[2] for c in commands] == [
      'stau_jax.main', 'stau_jax.export', 'stau_jax.evaluate',
      'stau_jax.predict', 'stau_jax.visualize']
  folder = tmp_path / 'my_videos'
  folder.mkdir()
  for index, name in enumerate(('street.mp4', 'park.avi', 'yard.mp4')):
    write_video(folder / name, np.roll(video_frames(12, 16, 16), index, 0),
                'mpeg4')
  start = time.time()
  for command in commands:
    args = [arg.replace('configs/', os.path.join(runs.REPO, 'configs/'))
            for arg in shlex.split(command)[1:]]
    if args[1] == 'stau_jax.main':
      args += TINY_OVERRIDES
    runs.python(*args, cwd=str(tmp_path))
  print(f'The documented commands took {time.time() - start:.0f} s.')
  with open(tmp_path / 'runs' / 'my_videos' / 'config.json') as f:
    assert json.load(f)['data']['dataset'] == 'video_folder'
  with open(tmp_path / 'metrics.json') as f:
    identity = json.load(f)['test_set']
  assert identity['dataset'] == 'video_folder' and identity['source'] == (
      'my_videos') and identity['num_sequences'] >= 1
  assert np.load(tmp_path / 'future.npy').shape == (1, 2, 16, 16, 3)
  with Image.open(tmp_path / 'future.gif') as gif:
    assert gif.n_frames == 4
  assert sorted(os.listdir(tmp_path / 'pictures')) == [
      'animation.gif', 'attention.png', 'gates.png', 'strip.png']
