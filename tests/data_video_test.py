"""Tests for the real-video pipelines on tiny synthetic fixtures."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import kitti
from configs import sthsth
from configs import towncentre
from stau_jax import data as data_lib
from stau_jax import errors
from stau_jax import models
from stau_jax.data import sthsth as sthsth_data
from stau_jax.data import video
from tests.videos import video_frames
from tests.videos import write_video

pytest.importorskip('tensorflow')

# Frame i of a fixture is filled with the value 10 * i + 5, so the frame
# index survives cropping and resizing.


def _frame(index, shape=(12, 20, 3)):
  return np.full(shape, 10 * index + 5, np.uint8)


def _indices(frames):
  return np.rint(frames[..., 0].mean(axis=(-1, -2)) * 255 - 5) / 10


def _small(config, **data):
  config.data.update(dict(image_size=(8, 16), input_length=2, total_length=3,
                          test_total_length=4), **data)
  config.batch_size = 4
  config.eval_batch_size = 4
  return config


def _kitti_arrays(tmp_path, suffix='.npy'):
  frames = np.stack([_frame(i) for i in range(13)])
  sources = np.array(['a'] * 6 + ['b'] * 7)
  if suffix == '.npy':
    np.save(tmp_path / 'X.npy', frames)
    np.save(tmp_path / 'sources.npy', sources)
  else:
    np.savez(tmp_path / 'X.npz', frames)
    np.savez(tmp_path / 'sources.npz', sources)
  return _small(kitti.get_config(), data_dir=str(tmp_path),
                train_path='X' + suffix, train_sources='sources' + suffix,
                test_path='X' + suffix, test_sources='sources' + suffix)


def _check_windows(sequences, clip_starts):
  """Frame indices are consecutive and stay inside one clip."""
  for sequence in _indices(sequences).reshape(-1, sequences.shape[-4]):
    assert np.all(np.diff(sequence) == 1), sequence
    clip = np.searchsorted(clip_starts, sequence, side='right')
    assert len(set(clip)) == 1, sequence


@pytest.mark.parametrize('suffix', ['.npy', '.npz'])
def test_kitti_arrays_train_shapes_range_and_clip_boundaries(tmp_path, suffix):
  config = _kitti_arrays(tmp_path, suffix)
  stream = data_lib.create_train_iterator(config, num_devices=2)
  batches = [next(stream) for _ in range(6)]
  assert batches[0].shape == (2, 2, 3, 8, 16, 3)
  assert batches[0].dtype == np.float32
  assert all(0 <= b.min() and b.max() <= 1 for b in batches)
  _check_windows(np.concatenate(batches).reshape(-1, 3, 8, 16, 3), [0, 6])
  # 9 windows (4 in clip a, 5 in clip b): the stream covers them all.
  starts = {int(s[0]) for s in _indices(np.concatenate(batches)).reshape(-1, 3)}
  assert starts == {0, 1, 2, 3, 6, 7, 8, 9, 10}


def test_kitti_stream_is_deterministic_and_resumable(tmp_path):
  config = _kitti_arrays(tmp_path)
  stream = data_lib.create_train_iterator(config, num_devices=1)
  uninterrupted = [next(stream) for _ in range(4)]
  again = data_lib.create_train_iterator(config, num_devices=1)
  np.testing.assert_array_equal(next(again), uninterrupted[0])
  resumed = data_lib.create_train_iterator(config, num_devices=1,
                                           start_step=3)
  np.testing.assert_array_equal(next(resumed), uninterrupted[3])
  other = next(data_lib.create_train_iterator(config, seed=5, num_devices=1))
  assert not np.array_equal(other, uninterrupted[0])


def test_kitti_hosts_read_disjoint_shards(tmp_path):
  config = _kitti_arrays(tmp_path)
  shards = [next(data_lib.create_train_iterator(
      config, num_devices=1, process_index=i, process_count=2))
            for i in range(2)]
  assert shards[0].shape == (1, 2, 3, 8, 16, 3)
  starts = [set(_indices(s)[..., 0].ravel()) for s in shards]
  assert not starts[0] & starts[1]


def test_kitti_test_set_is_disjoint_windows_with_padding(tmp_path):
  config = _kitti_arrays(tmp_path)
  batches = list(data_lib.create_test_iterator(config))
  assert len(batches) == 1
  assert batches[0]['frames'].shape == (4, 4, 8, 16, 3)
  np.testing.assert_array_equal(batches[0]['valid'], [1, 1, 0, 0])
  np.testing.assert_array_equal(_indices(batches[0]['frames'][:2]),
                                [[0, 1, 2, 3], [6, 7, 8, 9]])


def test_clip_folders_layout_skips_short_clips(tmp_path):
  for clip, count in (('clip0', 5), ('clip1', 2)):
    os.makedirs(tmp_path / clip)
    for i in range(count):
      index = i if clip == 'clip0' else 5 + i
      Image.fromarray(_frame(index)).save(tmp_path / clip / f'{i:03d}.png')
  config = _small(kitti.get_config(), data_dir='', train_path=str(tmp_path),
                  train_sources='', test_path=str(tmp_path), test_sources='')
  batch = next(data_lib.create_train_iterator(config, num_devices=1))[0]
  _check_windows(batch, [0, 5])
  assert set(_indices(batch)[:, 0]) <= {0, 1, 2}  # clip1 (2 frames) too short
  test = list(data_lib.create_test_iterator(config))
  np.testing.assert_array_equal(_indices(test[0]['frames'][:1]), [[0, 1, 2, 3]])


def _towncentre(tmp_path, count=12):
  folder = tmp_path / 'frames'
  os.makedirs(folder)
  for i in range(count):
    Image.fromarray(_frame(i)).save(folder / f'{i:05d}.jpg', quality=100)
  return _towncentre_config(tmp_path, 'frames')


def _towncentre_config(tmp_path, video_path):
  config = _small(towncentre.get_config(), data_dir=str(tmp_path),
                  video_path=video_path, num_train_frames=7, num_test_frames=5)
  config.model.num_downsample = 3
  return config


def test_towncentre_first_frames_train_last_frames_test(tmp_path):
  config = _towncentre(tmp_path)
  stream = data_lib.create_train_iterator(config, num_devices=1)
  train = np.concatenate([next(stream)[0] for _ in range(3)])
  assert _indices(train).max() <= 6  # only the first 7 frames
  _check_windows(train, [0])
  test = list(data_lib.create_test_iterator(config))
  np.testing.assert_array_equal(test[0]['valid'], [1, 0, 0, 0])
  np.testing.assert_array_equal(_indices(test[0]['frames'][:1]),
                                [[7, 8, 9, 10]])


def test_towncentre_too_few_frames_is_named(tmp_path):
  config = _towncentre(tmp_path, count=4)
  with pytest.raises(ValueError, match=r'frames: has 4 frames; .*need at least 7'):
    data_lib.create_train_iterator(config, num_devices=1)


# Decoding error of the tiny videos of tests/videos.py: their mean abs error
# is ~0.007 on [0, 1], neighbouring frames differ by ~0.03.
TOLERANCE = 0.02


def _error(decoded, expected):
  """Mean abs error on [0, 1] between uint8 or float [0, 1] frames."""
  scale = lambda x: np.asarray(x, np.float32) / (
      255 if np.asarray(x).dtype == np.uint8 else 1)
  return np.abs(scale(decoded) - scale(expected)).mean()


def _check_decoded(decoded, frames):
  """Same count and shape; each frame is close to its original and closer to
  it than to any other (so order and count survive decoding)."""
  assert decoded.shape == frames.shape and decoded.dtype == np.uint8
  errors = np.array([[_error(d, f) for f in frames] for d in decoded])
  assert np.all(np.diag(errors) < TOLERANCE), np.diag(errors)
  np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(len(frames)))


def _resized(frames, image_size=(8, 16)):
  return video.crop_and_resize(frames, image_size).numpy()


@pytest.mark.parametrize('codec, suffix', [('mpeg4', '.avi'),
                                           ('mpeg4', '.mp4'),
                                           ('libvpx', '.webm')])
@pytest.mark.parametrize('backend', ['av', 'cv2'])
def test_video_decoders_round_trip(tmp_path, monkeypatch, backend, codec,
                                   suffix):
  pytest.importorskip(backend)
  frames = video_frames()
  path = write_video(tmp_path / f'clip{suffix}', frames, codec)
  monkeypatch.setattr(video, 'video_backend', lambda: backend)
  _check_decoded(video.decode_video(path), frames)


def _towncentre_video(tmp_path):
  frames = video_frames()
  write_video(tmp_path / 'TownCentreXVID.avi', frames, 'mpeg4')
  return frames, _towncentre_config(tmp_path, 'TownCentreXVID.avi')


def test_towncentre_video_file_is_decoded_once_into_a_cache(tmp_path,
                                                             monkeypatch):
  frames, config = _towncentre_video(tmp_path)
  batch = next(data_lib.create_train_iterator(config, num_devices=1))
  assert batch.shape == (1, 4, 3, 8, 16, 3) and batch.dtype == np.float32
  assert 0 <= batch.min() and batch.max() <= 1
  cache = tmp_path / 'TownCentreXVID.avi.frames'
  assert sorted(os.listdir(tmp_path)) == ['TownCentreXVID.avi',
                                          'TownCentreXVID.avi.frames']
  assert len(os.listdir(cache)) == 12
  _check_decoded(np.stack([np.asarray(Image.open(cache / name)) for name in
                           sorted(os.listdir(cache))]), frames)
  test = list(data_lib.create_test_iterator(config))
  np.testing.assert_array_equal(test[0]['valid'], [1, 0, 0, 0])
  assert _error(test[0]['frames'][0], _resized(frames[7:11])) < TOLERANCE

  def no_decoding(path):
    raise AssertionError(f'{path} decoded again')
  monkeypatch.setattr(video, 'iterate_video', no_decoding)
  again = list(data_lib.create_test_iterator(config))
  np.testing.assert_array_equal(again[0]['frames'], test[0]['frames'])
  next(data_lib.create_train_iterator(config, num_devices=1))


@pytest.mark.parametrize('failure, error, match', [
    (KeyboardInterrupt, KeyboardInterrupt, None),
    (RuntimeError('disk full'), ValueError, r'TownCentreXVID.avi: could not '
     r'decode the video \(disk full\)')])
def test_towncentre_interrupted_extraction_leaves_no_cache(
    tmp_path, monkeypatch, failure, error, match):
  _, config = _towncentre_video(tmp_path)
  real = video.iterate_video

  def interrupted(path):
    yield from list(real(path))[:3]
    raise failure
  monkeypatch.setattr(video, 'iterate_video', interrupted)
  with pytest.raises(error, match=match):
    data_lib.create_train_iterator(config, num_devices=1)
  assert os.listdir(tmp_path) == ['TownCentreXVID.avi']
  monkeypatch.setattr(video, 'iterate_video', real)
  next(data_lib.create_train_iterator(config, num_devices=1))
  assert len(os.listdir(tmp_path / 'TownCentreXVID.avi.frames')) == 12


def test_towncentre_cache_falls_back_to_data_dir(tmp_path, monkeypatch):
  os.makedirs(tmp_path / 'videos')
  write_video(tmp_path / 'videos' / 'TownCentreXVID.avi', video_frames(),
               'mpeg4')
  config = _towncentre_config(tmp_path, 'videos/TownCentreXVID.avi')
  access = os.access
  monkeypatch.setattr(video.os, 'access', lambda path, mode: (
      not path.endswith('videos') and access(path, mode)))
  next(data_lib.create_train_iterator(config, num_devices=1))
  assert os.listdir(tmp_path / 'videos') == ['TownCentreXVID.avi']
  assert len(os.listdir(tmp_path / 'TownCentreXVID.avi.frames')) == 12
  monkeypatch.setattr(video.os, 'access', lambda path, mode: False)
  next(data_lib.create_train_iterator(config, num_devices=1))  # Cache found.
  os.rename(tmp_path / 'TownCentreXVID.avi.frames', tmp_path / 'old')
  with pytest.raises(ValueError, match=r'TownCentreXVID.avi: cannot cache its '
                     'frames'):
    data_lib.create_train_iterator(config, num_devices=1)


def test_towncentre_video_without_decoder_says_what_to_install(tmp_path,
                                                               monkeypatch):
  (tmp_path / 'TownCentreXVID.avi').write_bytes(b'not a video')
  config = _towncentre_config(tmp_path, 'TownCentreXVID.avi')
  monkeypatch.setattr(video.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ImportError, match=r'pip install av'):
    data_lib.create_train_iterator(config, num_devices=1)
  assert os.listdir(tmp_path) == ['TownCentreXVID.avi']


def test_towncentre_unreadable_video_is_named(tmp_path):
  pytest.importorskip('av')
  (tmp_path / 'TownCentreXVID.avi').write_bytes(b'not a video')
  config = _towncentre_config(tmp_path, 'TownCentreXVID.avi')
  with pytest.raises(ValueError, match=r'TownCentreXVID.avi: could not decode'):
    data_lib.create_train_iterator(config, num_devices=1)
  assert os.listdir(tmp_path) == ['TownCentreXVID.avi']


def _sthsth(tmp_path, lengths=(6, 5, 8)):
  root = tmp_path / 'frames'
  templates = ['Pushing [something] from left to right',
               'Putting [something] on a surface']
  entries = []
  for clip, length in enumerate(lengths):
    os.makedirs(root / str(100 + clip))
    for i in range(length):
      Image.fromarray(_frame(i, (16, 24, 3))).save(
          root / str(100 + clip) / f'{i:05d}.jpg', quality=100)
    entries.append({'id': str(100 + clip), 'label': 'x',
                    'template': templates[clip % 2], 'placeholders': ['x']})
  entries.append({'id': '999', 'label': 'x', 'template': templates[0],
                  'placeholders': []})  # listed but not on disk: skipped
  (tmp_path / 'train.json').write_text(json.dumps(entries))
  (tmp_path / 'labels.json').write_text(json.dumps({
      'Pushing something from left to right': '7',
      'Putting something on a surface': '3'}))
  return _small(sthsth.get_config(), data_dir=str(tmp_path),
                train_path='frames', test_path='frames',
                train_labels='train.json', test_labels='train.json',
                label_map='labels.json', total_length=4, test_total_length=4)


def test_sthsth_frame_folders_sample_clips_uniformly_with_labels(tmp_path):
  config = _sthsth(tmp_path)
  dataset = sthsth_data.dataset(config, 'train', 3, train=False)
  batch = next(dataset.as_numpy_iterator())
  assert batch['frames'].shape == (3, 4, 8, 16, 3)
  np.testing.assert_array_equal(batch['label'], [7, 3, 7])
  np.testing.assert_array_equal(_indices(batch['frames']),
                                [[0, 2, 3, 5], [0, 1, 3, 4], [0, 2, 5, 7]])
  train = next(data_lib.create_train_iterator(config, num_devices=1))
  assert train.shape == (1, 4, 4, 8, 16, 3)


def test_labelled_sthsth_test_set_passes_carry_labels_and_padding(tmp_path):
  test_set = data_lib.load_labelled_test_set(_sthsth(tmp_path))
  assert test_set.size == 3
  for _ in range(2):  # every pass is the same
    batches = list(test_set.batches(2))
    assert [b['frames'].shape for b in batches] == [(2, 4, 8, 16, 3)] * 2
    np.testing.assert_array_equal(batches[1]['valid'], [True, False])
    np.testing.assert_array_equal(
        np.concatenate([b['labels'] for b in batches]), [7, 3, 7, 0])
    np.testing.assert_array_equal(_indices(batches[0]['frames']),
                                  [[0, 2, 3, 5], [0, 1, 3, 4]])


def test_sthsth_too_short_clip_is_named(tmp_path):
  config = _sthsth(tmp_path, lengths=(6, 2))
  with pytest.raises(ValueError, match=r'clip #1 has 2 frames, fewer than the 4'):
    data_lib.create_train_iterator(config, num_devices=1)


def test_sthsth_webm_without_decoder_says_what_to_install(tmp_path, monkeypatch):
  config = _sthsth(tmp_path, lengths=(4,))
  (tmp_path / 'frames' / '100.webm').write_bytes(b'')
  monkeypatch.setattr(video.importlib.util, 'find_spec', lambda name: None)
  os.rename(tmp_path / 'frames' / '100', tmp_path / 'frames_100')
  with pytest.raises(ImportError, match=r'pip install av'):
    data_lib.create_train_iterator(config, num_devices=1)


def test_sthsth_webm_videos_decode_sample_uniformly_with_labels(tmp_path):
  config = _sthsth(tmp_path, lengths=(4,))
  os.rename(tmp_path / 'frames' / '100', tmp_path / 'frames_100')
  clips = {}
  for clip, length in zip(('100', '101', '102'), (12, 9, 10)):
    clips[clip] = video_frames(length)[::-1]  # Reversed: order matters.
    write_video(tmp_path / 'frames' / f'{clip}.webm', clips[clip], 'libvpx')
  entries = json.loads((tmp_path / 'train.json').read_text())
  entries += [dict(entries[0], id='101', template='Putting [something] on a '
                   'surface'), dict(entries[0], id='102')]
  (tmp_path / 'train.json').write_text(json.dumps(entries))
  for clip, frames in clips.items():
    _check_decoded(video.decode_video(
        str(tmp_path / 'frames' / f'{clip}.webm')), frames)
  batch = next(sthsth_data.dataset(config, 'train', 3,
                                    train=False).as_numpy_iterator())
  assert batch['frames'].shape == (3, 4, 8, 16, 3)
  assert 0 <= batch['frames'].min() and batch['frames'].max() <= 1
  np.testing.assert_array_equal(batch['label'], [7, 3, 7])
  for frames, clip in zip(batch['frames'], clips.values()):
    picks = np.linspace(0, len(clip) - 1, 4).round().astype(int)
    assert _error(frames, _resized(clip[picks])) < TOLERANCE
  train = next(data_lib.create_train_iterator(config, num_devices=1))
  assert train.shape == (1, 4, 4, 8, 16, 3)


def _write_hickle(path, array, layout):
  """`array` in the HDF5 layout hickle writes: version 2/3 ('data_0' with
  type [b'ndarray'] or [b"<type 'list'>"]), 4 ('data' with a base_type) or 5
  ('data' whose type refers to an entry of its hickle_types_table)."""
  import h5py  # pylint: disable=g-import-not-at-top
  kind = 'list' if array.dtype.kind == 'S' else 'ndarray'
  with h5py.File(path, 'w') as f:
    if layout == 'hickle2':
      f.attrs.update(CLASS=b'hickle', VERSION=b'2')
      node = f.create_dataset('data_0', data=array)
      node.attrs['type'] = [b"<type 'list'>" if kind == 'list' else b'ndarray']
      return
    f.attrs.update(HICKLE_VERSION=layout[-1] + '.0.0', HICKLE_PYTHON_VERSION='3')
    node = f.create_dataset('data', data=array,
                            compression='gzip' if layout == 'hickle4' else None)
    if layout == 'hickle4':
      node.attrs.update(base_type=kind, type=np.void(b'pickled type'))
    else:
      table = f.create_group('hickle_types_table')
      base = table.create_dataset(kind, shape=None, dtype='int')
      entry = table.create_dataset('0', data=np.frombuffer(b'pickled type', 'S1'))
      entry.attrs['base_type'] = base.ref
      node.attrs['type'] = entry.ref


@pytest.mark.parametrize('layout', ['hickle2', 'hickle4', 'hickle5'])
def test_hkl_frames_and_sources_load_as_hdf5_without_hickle(tmp_path, layout):
  config = _kitti_arrays(tmp_path)
  frames, sources = np.load(tmp_path / 'X.npy'), np.load(tmp_path / 'sources.npy')
  _write_hickle(tmp_path / 'X_train.hkl', frames, layout)
  _write_hickle(tmp_path / 'sources_train.hkl', sources.astype('S'), layout)
  read = video.read_frame_arrays(str(tmp_path / 'X_train.hkl'),
                                 str(tmp_path / 'sources_train.hkl'))
  np.testing.assert_array_equal(read.array, frames)
  np.testing.assert_array_equal(read.clip_lengths, [6, 7])
  config.data.update(train_path='X_train.hkl', train_sources='sources_train.hkl')
  assert next(data_lib.create_train_iterator(config, num_devices=1)).shape == (
      1, 4, 3, 8, 16, 3)


def _pickle_running(command):
  """Pickle bytes that run a shell command when unpickled."""
  return b"cos\nsystem\n(V" + command.encode() + b"\ntR."


@pytest.mark.parametrize('layout', ['hickle2', 'hickle4', 'hickle5', 'dict'])
def test_hkl_holding_a_pickle_is_refused_without_running_it(tmp_path, layout):
  import h5py  # pylint: disable=g-import-not-at-top
  marker = tmp_path / 'ran'
  payload = _pickle_running(f'touch {marker}')
  path = tmp_path / 'X_test.hkl'
  with h5py.File(path, 'w') as f:
    if layout == 'hickle2':  # hickle 2/3: a string dataset of type pickle
      f.create_dataset('data_0', data=[payload]).attrs['type'] = [b'pickle']
    elif layout == 'hickle4':
      f.create_dataset('data', data=payload).attrs['base_type'] = b'pickle'
    elif layout == 'hickle5':  # hickle 5: bytes without a type
      f.create_dataset('data', data=np.frombuffer(payload, np.uint8))
    else:
      f.create_group('data').attrs['base_type'] = b'dict'
  with pytest.raises(errors.InputError, match=r'X_test.hkl.*numpy.save'):
    video.load_array(str(path))
  assert not marker.exists()


def test_hkl_that_is_not_hdf5_names_the_file(tmp_path):
  (tmp_path / 'X_train.hkl').write_bytes(b'not hdf5')
  with pytest.raises(errors.InputError, match=r'Not a readable HDF5.*X_train'):
    video.load_array(str(tmp_path / 'X_train.hkl'))


@pytest.mark.parametrize('frames, match', [
    (np.zeros((5, 12, 20), np.uint8), r'X.npy: expected frames \(N, height'),
    (np.zeros((5, 12, 20, 3), np.float32), 'X.npy: expected uint8 frames'),
])
def test_wrong_array_layout_is_named(tmp_path, frames, match):
  config = _kitti_arrays(tmp_path)
  np.save(tmp_path / 'X.npy', frames)
  config.data.train_sources = ''
  with pytest.raises(ValueError, match=match):
    data_lib.create_train_iterator(config, num_devices=1)


def test_sources_length_mismatch_is_named(tmp_path):
  config = _kitti_arrays(tmp_path)
  np.save(tmp_path / 'sources.npy', np.array(['a'] * 4))
  with pytest.raises(ValueError, match=r'sources.npy: has 4 entries but .*13'):
    data_lib.create_train_iterator(config, num_devices=1)


def test_no_clip_long_enough_is_named(tmp_path):
  config = _kitti_arrays(tmp_path)
  config.data.total_length = 8
  with pytest.raises(ValueError, match=r'X.npy: no clip has the 8 frames'):
    data_lib.create_train_iterator(config, num_devices=1)


def test_missing_path_is_named(tmp_path):
  config = _kitti_arrays(tmp_path)
  config.data.test_path = 'missing/X_test.npy'
  with pytest.raises(ValueError, match=r'test_path: .*missing/X_test.npy does '
                     'not exist'):
    data_lib.validate_data_config(config, num_devices=1)


def test_paper_configs_validate_their_shapes():
  for module, size, factor in ((kitti, (128, 160), 8),
                               (towncentre, (1088, 1920), 16),
                               (sthsth, (128, 128), 8)):
    config = module.get_config()
    assert tuple(config.data.image_size) == size
    assert 2**config.model.num_downsample == factor
    assert config.model.num_layers == 16 and config.model.residual
  config = kitti.get_config()
  config.data.image_size = (124, 160)
  with pytest.raises(ValueError, match=r'124x160 is not divisible by .* 8'):
    models.validate_model_config(config)
