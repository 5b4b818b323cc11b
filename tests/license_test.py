"""The license: one LICENSE file matching setup.cfg, no per-file headers."""
import configparser
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_license_file_is_the_apache_license_setup_cfg_names():
  with open(os.path.join(ROOT, 'LICENSE')) as f:
    text = f.read()
  assert text.startswith('Copyright 2026 The stau_jax Authors\n')
  assert 'Apache License\n                           Version 2.0, January 2004' in text
  assert 'END OF TERMS AND CONDITIONS' in text
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, 'setup.cfg'))
  assert setup['metadata']['license'] == 'Apache-2.0'
  assert setup['metadata']['license_files'] == 'LICENSE'


def test_no_file_carries_its_own_license_header():
  headed = []
  for path in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True):
    with open(path) as f:
      head = f.read(300)
    if 'Copyright' in head or 'Licensed under' in head:
      headed.append(os.path.relpath(path, ROOT))
  assert not headed, headed
