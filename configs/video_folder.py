"""Your own videos: a folder of video files or frame folders (docs/datasets.md).

  python -m stau_jax.main --config=configs/video_folder.py \
      --config.data.data_dir=path/to/videos --workdir=runs/my_videos

64x64 RGB frames (center-cropped and resized), 10 -> 10 frames, every frame
(frame_stride 1), a training sequence starting at every frame (clip_stride
1); 4 STAU layers x 64 hidden, 2 down/upsampling layers. test.txt in the
folder names the test clips, else a tenth of them (chosen by name) test.
"""
from configs import base


def get_config():
  """Returns the config of a folder of videos (set data.data_dir)."""
  config = base.shared_config()
  config.name = 'video_folder'
  config.model.num_layers = 4
  config.model.num_downsample = 2
  config.model.residual = False
  data = config.data
  data.dataset = 'video_folder'
  data.data_dir = ''  # the folder of your videos (required)
  data.image_size = (64, 64)
  data.channels = 3  # 3: RGB, 1: gray
  data.input_length = 10
  data.total_length = 20
  data.frame_stride = 1  # take every k-th frame
  data.clip_stride = 1  # a training sequence starts every k frames
  data.test_fraction = 0.1  # of the clips, when there is no test.txt
  data.skip_bad_files = False  # True: skip unreadable / short clips, warning
  return config
