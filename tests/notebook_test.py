"""Runs notebooks/stau_jax_colab.ipynb top to bottom, offline, on the CPU."""
import os

import nbclient
import nbformat

from tests import runs

NOTEBOOK = os.path.join(runs.REPO, 'notebooks', 'stau_jax_colab.ipynb')


def _outputs_by_tag(notebook):
  return {tag: cell.outputs for cell in notebook.cells
          if cell.cell_type == 'code' for tag in cell.metadata.get('tags', [])}


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert 'colab.research.google.com/github/' in notebook.cells[0].source
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
