r"""A synthetic street video of drawn people walking, to try detection offline.

  python tools/walking_people.py --output=street [--num_frames=3000 --size=64 \
      --clip_length=8 --num_clips=64]

writes street/frames/000000.png ... (RGB, a folder of frames that
configs/towncentre.py reads as data.video_path) and street/clips.npy, uint8
(num_clips, clip_length, size, size, 3): consecutive disjoint clips of the
last num_clips x clip_length frames (train on the frames before them, e.g.
--config.data.num_train_frames=num_frames - num_clips x clip_length).

Up to two people walk across a two-tone street at 0.6 to 1.2 pixels per
frame, swinging legs and arms, about 0.6 x size tall (OpenCV's HOG
pedestrian detector finds them once frames are enlarged to 256 pixels). They
are drawn 8x larger and downsampled, so edges are antialiased like a filmed
frame. Deterministic for --seed.
"""
import argparse
import dataclasses
import math
import os
import sys

import numpy as np
from PIL import Image
from PIL import ImageDraw

_SUPERSAMPLE = 8


@dataclasses.dataclass
class Person:
  """A walker: x of the body's center and y of the feet in pixels; phase of the stride."""
  x: float
  feet: float
  height: float
  speed: float  # pixels per frame, signed
  color: tuple
  phase: float = 0.0


def draw_person(draw, person, scale=1):
  """Draws `person` (head, torso, swinging arms and legs) with `scale`x coordinates."""
  u = person.height / 8 * scale  # a head's height; a person is 8 heads tall
  x, top = person.x * scale, (person.feet - person.height) * scale
  swing = 0.6 * math.sin(person.phase)
  parts = [
      [(-0.2, 1.0), (0.2, 1.0), (0.25, 1.3), (-0.25, 1.3)],  # neck
      [(-1.0, 1.3), (1.0, 1.3), (0.8, 4.2), (-0.8, 4.2)],  # torso
      [(-1.0, 1.3), (-1.35 - swing / 2, 4.3), (-1.0 - swing / 2, 4.4),
       (-0.75, 2.0)],  # arms, opposite to the legs
      [(1.0, 1.3), (1.35 + swing / 2, 4.3), (1.0 + swing / 2, 4.4),
       (0.75, 2.0)],
      [(-0.8, 4.1), (-0.05, 4.1), (-0.15 + swing, 8.0),
       (-0.75 + swing, 8.0)],  # legs
      [(0.8, 4.1), (0.05, 4.1), (0.15 - swing, 8.0), (0.75 - swing, 8.0)],
  ]
  draw.ellipse([x - 0.45 * u, top, x + 0.45 * u, top + 1.1 * u],
               fill=person.color)
  for part in parts:
    draw.polygon([(x + dx * u, top + dy * u) for dx, dy in part],
                 fill=person.color)


def render(people, size, background=((200, 200, 205), (165, 160, 150))):
  """uint8 (size, size, 3) frame: sky/wall over pavement, the people drawn on it."""
  big = size * _SUPERSAMPLE
  image = Image.new('RGB', (big, big), background[0])
  draw = ImageDraw.Draw(image)
  draw.rectangle([0, big * 0.7, big, big], fill=background[1])
  for person in people:
    draw_person(draw, person, _SUPERSAMPLE)
  return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def street_frames(num_frames, size=64, seed=0):
  """Yields `num_frames` uint8 (size, size, 3) frames of people walking by."""
  rng = np.random.default_rng(seed)
  people = []
  for _ in range(num_frames):
    if len(people) < 2 and rng.random() < 0.05:
      direction = rng.choice([-1, 1])
      height = size * rng.uniform(0.55, 0.68)
      people.append(Person(
          x=-0.2 * height if direction > 0 else size + 0.2 * height,
          feet=size * rng.uniform(0.88, 0.97), height=height,
          speed=direction * rng.uniform(0.6, 1.2),
          color=tuple(int(c) for c in rng.integers(20, 110, 3))))
    yield render(people, size)
    for person in people:
      person.x += person.speed
      person.phase += abs(person.speed) / person.height * 2 * math.pi
    people = [p for p in people if -0.3 * p.height < p.x < size + 0.3 * p.height]


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True, help='Folder to write.')
  parser.add_argument('--num_frames', type=int, default=3000)
  parser.add_argument('--size', type=int, default=64, help='Frame size.')
  parser.add_argument('--clip_length', type=int, default=8)
  parser.add_argument('--num_clips', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  clip_frames = args.clip_length * args.num_clips
  if clip_frames > args.num_frames:
    parser.error(f'--num_clips x --clip_length = {clip_frames} frames is more '
                 f'than --num_frames={args.num_frames}.')
  folder = os.path.join(args.output, 'frames')
  os.makedirs(folder, exist_ok=True)
  frames = []
  for i, frame in enumerate(street_frames(args.num_frames, args.size,
                                          args.seed)):
    Image.fromarray(frame).save(os.path.join(folder, f'{i:06d}.png'))
    if i >= args.num_frames - clip_frames:
      frames.append(frame)
  clips = np.stack(frames).reshape(args.num_clips, args.clip_length,
                                   args.size, args.size, 3)
  np.save(os.path.join(args.output, 'clips.npy'), clips)
  print(f'Wrote {args.num_frames} frames to {folder} and {clips.shape} clips '
        f'(the last {clip_frames} frames) to '
        f'{os.path.join(args.output, "clips.npy")}.')


if __name__ == '__main__':
  main(sys.argv[1:])
