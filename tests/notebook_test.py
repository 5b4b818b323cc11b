"""Runs notebooks/stau_jax_colab.ipynb top to bottom, offline, on the CPU,
and its setup cell as Colab runs it."""
import os
import shutil
import subprocess
import sys
import types

import nbclient
import nbformat
import pytest

from tests import runs

NOTEBOOK = os.path.join(runs.REPO, 'notebooks', 'stau_jax_colab.ipynb')


def notebook_text():
  with open(NOTEBOOK, encoding='utf-8') as f:
    return f.read()


def _outputs_by_tag(notebook):
  return {tag: cell.outputs for cell in notebook.cells
          if cell.cell_type == 'code' for tag in cell.metadata.get('tags', [])}


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  opening = notebook.cells[0].source
  assert 'File > Upload notebook' in opening
  assert ('https://colab.research.google.com/github/<user>/<repo>/blob/main/'
          'notebooks/stau_jax_colab.ipynb') in opening
  assert 'colab-badge' not in opening and 'stau-jax/' not in notebook_text()
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_and_shows_the_pictures(tmp_path, monkeypatch):
  monkeypatch.setenv('STAU_NOTEBOOK_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', runs.COMPILATION_CACHE)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # Raises CellExecutionError naming the cell if any cell fails.
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  outputs = _outputs_by_tag(notebook)
  for tag in ('loss', 'evaluate', 'strip', 'attention', 'gates'):
    assert any('image/png' in o.get('data', {}) for o in outputs[tag]), tag
  assert sum('image/png' in o.get('data', {}) for o in outputs['strip']) == 3
  assert any('image/gif' in o.get('data', {}) for o in outputs['animation'])
  evaluation = ''.join(o.get('text', '') for o in outputs['evaluate'])
  assert 'mean' in evaluation and 'psnr' in evaluation
  assert os.path.isfile(tmp_path / 'run' / 'tiny.export')
  assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['300']


def _fake_run(commands):
  """subprocess.run that records commands; `git clone URL DIR` makes DIR a
  stand-in checkout (configs/tiny.py), pip does nothing."""
  def run(command, **unused_kwargs):
    commands.append(command)
    if command[:2] == ['git', 'clone']:
      os.makedirs(os.path.join(command[-1], 'configs'))
      open(os.path.join(command[-1], 'configs', 'tiny.py'), 'w').close()
  return run


def _run_setup_as_colab(directory, monkeypatch, repo_url=''):
  """Runs the setup cell in `directory` as Colab would (google.colab
  imported), with REPO_URL = repo_url; returns the commands it ran (through
  `_fake_run`) and the folder it ends in."""
  monkeypatch.chdir(directory)
  monkeypatch.setitem(sys.modules, 'google.colab', types.ModuleType('colab'))
  monkeypatch.setattr(sys, 'path', list(sys.path))
  commands = []
  monkeypatch.setattr(subprocess, 'run', _fake_run(commands))
  source = nbformat.read(NOTEBOOK, as_version=4).cells[2].source
  assert "REPO_URL = ''" in source  # no default to someone else's copy
  source = source.replace("REPO_URL = ''", f'REPO_URL = {repo_url!r}')
  exec(compile(source, 'setup cell', 'exec'), {})  # pylint: disable=exec-used
  return commands, os.getcwd()


PIP_INSTALL = [sys.executable, '-m', 'pip', 'install', '-q', '-e', '.']


def test_in_colab_the_setup_cell_installs_an_uploaded_zip(tmp_path,
                                                          monkeypatch):
  copy = tmp_path / 'zipped' / 'stau_jax-main'
  (copy / 'configs').mkdir(parents=True)
  (copy / 'configs' / 'tiny.py').write_text('')
  (tmp_path / 'colab').mkdir()
  shutil.make_archive(str(tmp_path / 'colab' / 'stau_jax'), 'zip',
                      tmp_path / 'zipped')
  commands, folder = _run_setup_as_colab(tmp_path / 'colab', monkeypatch)
  assert folder == str(tmp_path / 'colab' / 'stau_jax_checkout' /
                       'stau_jax-main')
  assert commands == [PIP_INSTALL]


def test_in_colab_the_setup_cell_clones_repo_url_once(tmp_path, monkeypatch):
  url = 'https://github.com/someone/stau_jax'
  commands, folder = _run_setup_as_colab(tmp_path, monkeypatch, url)
  assert folder == str(tmp_path / 'stau_jax_checkout')
  assert commands == [['git', 'clone', '-q', url, 'stau_jax_checkout'],
                      PIP_INSTALL]
  commands, _ = _run_setup_as_colab(tmp_path, monkeypatch, url)
  assert commands == [PIP_INSTALL]  # run again in /content: no second clone


def test_in_colab_without_a_copy_the_setup_cell_says_what_to_set(
    tmp_path, monkeypatch):
  with pytest.raises(RuntimeError, match='set REPO_URL to your copy'):
    _run_setup_as_colab(tmp_path, monkeypatch)
