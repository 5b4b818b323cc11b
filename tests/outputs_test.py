"""Tests of stau_jax.outputs: whole-or-absent writes and output path checks."""
import errno
import os

import pytest

from stau_jax import outputs


def test_write_text_replaces_whole_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'metrics.json'
  path.write_text('old')
  outputs.write_text(str(path), 'new')
  assert path.read_text() == 'new'
  assert os.listdir(tmp_path) == ['metrics.json']


def test_failure_keeps_old_file_and_removes_temporary(tmp_path):
  path = tmp_path / 'out.npy'
  path.write_text('old')
  with pytest.raises(KeyboardInterrupt):
    with outputs.atomic_path(str(path)) as temporary:
      with open(temporary, 'w') as f:
        f.write('half')
      raise KeyboardInterrupt
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['out.npy']


def test_full_disk_names_the_output(tmp_path):
  path = str(tmp_path / 'out.bin')
  with pytest.raises(outputs.OutputError, match='disk is full.*out.bin'):
    with outputs.atomic_path(path):
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert os.listdir(tmp_path) == []


def test_missing_folder_is_refused_at_write(tmp_path):
  with pytest.raises(outputs.OutputError, match='beside the output'):
    outputs.write_text(str(tmp_path / 'no' / 'x.json'), '{}')


@pytest.mark.parametrize('make_paths, message', [
    (lambda d: {'output': str(d)}, 'is a directory'),
    (lambda d: {'output': str(d / 'missing' / 'x.json')}, 'does not exist'),
    (lambda d: {'output': str(d / 'a.json'), 'picture': str(d / 'a.json')},
     'name the same file'),
    (lambda d: {'picture': str(d / 'a.json')}, 'must end with .png'),
    (lambda d: {'output': ''}, '--output is empty'),
])
def test_bad_output_paths_are_refused(tmp_path, make_paths, message):
  with pytest.raises(outputs.OutputError, match=message):
    outputs.check_output_paths(suffixes={'picture': ('.png',)},
                               **make_paths(tmp_path))


def test_an_output_on_an_input_is_refused(tmp_path):
  clips = str(tmp_path / 'clips.npy')
  with pytest.raises(outputs.OutputError,
                     match=r'--output=.*clips.npy would overwrite the input '
                     '--input: write the output to another file'):
    outputs.check_output_paths(inputs={'input': clips, 'export': None},
                               output=clips)


def test_good_output_paths_pass(tmp_path):
  paths = outputs.check_output_paths(
      suffixes={'picture': ('.png',)}, output=str(tmp_path / 'a.json'),
      picture=str(tmp_path / 'a.PNG'), gif=None)
  assert set(paths) == {'output', 'picture'}


def test_written_file_has_the_mode_open_gives(tmp_path):
  umask = os.umask(0o022)
  try:
    path = tmp_path / 'a.json'
    outputs.write_text(str(path), '{}')
    assert (path.stat().st_mode & 0o777) == 0o644
  finally:
    os.umask(umask)
