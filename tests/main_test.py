"""Tests of the `python -m stau_jax.main` command line."""
import os

from tests import runs


def test_default_workdir_progress_and_resume(tmp_path):
  args = ('-m', 'stau_jax.main', f'--config={runs.TINY_CONFIG}',
          '--config.num_train_steps=4', '--config.log_every_steps=2',
          '--config.checkpoint_every_steps=2', '--config.eval_every_steps=4',
          '--config.num_eval_batches=1')
  result = runs.python(*args, cwd=str(tmp_path))
  workdir = tmp_path / 'runs' / 'tiny'
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert 'step 1/4 | loss' in result.stderr  # the first steps, then ...
  assert 'step 2/4 | loss' in result.stderr  # every log_every_steps
  assert 'steps/s | ETA' in result.stderr
  assert 'Evaluation at step 4' in result.stderr
  assert 'orbax' not in result.stderr  # per-save INFO lines are filtered

  result = runs.python(*args, '--config.num_train_steps=6', cwd=str(tmp_path))
  assert 'Resuming from the checkpoint of step 4' in result.stderr
  assert 'step 6/6 | loss' in result.stderr


def test_bad_config_fails_before_training(tmp_path):
  result = runs.python(*runs.train_args(str(tmp_path / 'run'),
                                        '--config.model.filter_size=4'),
                       check=False)
  assert result.returncode != 0
  assert 'filter_size must be odd' in result.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')

  result = runs.python(
      *runs.train_args(str(tmp_path / 'run'), '--config.batch_size=3'),
      env=runs.environment(XLA_FLAGS=runs.TWO_CPU_DEVICES),
      check=False)
  assert result.returncode != 0
  assert 'config.batch_size=3 is not divisible' in result.stderr
