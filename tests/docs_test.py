"""README.md and docs/*.md point at things that exist.

Every relative link (and image) resolves to a file or folder of the
repository, and its #anchor to a heading of that file; every config file,
repository path in backticks and `python -m` module they name exists; and
README.md links every guide in docs/.
"""
import glob
import os
import re

import pytest

from tests import runs

DOCUMENTS = ['README.md'] + sorted(
    os.path.relpath(path, runs.REPO)
    for path in glob.glob(os.path.join(runs.REPO, 'docs', '*.md')))

_FENCE = re.compile(r'^```.*?^```', re.M | re.S)
_INLINE_CODE = re.compile(r'`[^`\n]*`')
_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.M)
_CONFIG = re.compile(r'\bconfigs/\w+\.py\b')
# A backticked repository path; placeholders (`configs/<name>.py`) are not.
_REPO_PATH = re.compile(
    r'`((?:configs|docs|launch|notebooks|stau_jax|tests|tools)/[^`\s<>]*)`')
_MODULE = re.compile(r'python -m ((?:stau_jax|tools)(?:\.\w+)+)')


def heading_anchors(text):
  """The #anchors GitHub gives the headings of a markdown text (outside code
  blocks): lower case, punctuation dropped, spaces to '-', repeats numbered."""
  anchors, counts = set(), {}
  for heading in _HEADING.findall(_FENCE.sub('', text)):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    count = counts.get(slug, 0)
    counts[slug] = count + 1
    anchors.add(f'{slug}-{count}' if count else slug)
  return anchors


def broken_links(document, root=runs.REPO):
  """'target: why' for each relative link of `document` (a path under root)
  that names no file or folder, or no heading of its file."""
  path = os.path.join(root, document)
  with open(path, encoding='utf-8') as f:
    text = f.read()
  problems = []
  for target in _LINK.findall(_INLINE_CODE.sub('', _FENCE.sub('', text))):
    if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):
      continue  # https:, mailto:, ...
    file, _, anchor = target.partition('#')
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file))
    if not os.path.exists(linked):
      problems.append(f'{target}: no such file')
    elif not os.path.realpath(linked).startswith(os.path.realpath(root)):
      problems.append(f'{target}: outside the repository')
    elif anchor and linked.endswith('.md'):
      with open(linked, encoding='utf-8') as f:
        if anchor not in heading_anchors(f.read()):
          problems.append(f'{target}: no heading #{anchor}')
  return problems


def missing_names(document, root=runs.REPO):
  """The config files, backticked repository paths and `python -m` modules
  that `document` names (code blocks included) and root does not hold."""
  with open(os.path.join(root, document), encoding='utf-8') as f:
    text = f.read()
  paths = set(_CONFIG.findall(text)) | set(_REPO_PATH.findall(text))
  missing = [path for path in sorted(paths)
             if not os.path.exists(os.path.join(root, path))]
  for module in sorted(set(_MODULE.findall(text))):
    stem = os.path.join(root, *module.split('.'))
    if not (os.path.isfile(stem + '.py') or
            os.path.isfile(os.path.join(stem, '__main__.py'))):
      missing.append(f'python -m {module}')
  return missing


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_relative_link_resolves(document):
  assert broken_links(document) == []


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_named_config_path_and_module_exists(document):
  assert missing_names(document) == []


def test_readme_links_every_guide():
  with open(os.path.join(runs.REPO, 'README.md'), encoding='utf-8') as f:
    linked = {os.path.normpath(target.partition('#')[0])
              for target in _LINK.findall(f.read())}
  guides = {document for document in DOCUMENTS if document != 'README.md'}
  assert guides - linked == set()


def test_anchors_follow_github():
  text = ('# Install and run\n## What you can do\n```bash\n# a comment\n```\n'
          '## Key figures (dated, 2026)\n## Notes\n### Notes\n')
  assert heading_anchors(text) == {
      'install-and-run', 'what-you-can-do', 'key-figures-dated-2026', 'notes',
      'notes-1'}


def test_the_checks_report_what_is_missing(tmp_path):
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'real.py').write_text('')
  (tmp_path / 'docs' / 'guide.md').write_text('# Guide\n## Real part\n')
  (tmp_path / 'README.md').write_text(
      '[ok](docs/guide.md#real-part) [gone](docs/gone.md) '
      '![picture](docs/picture.png) [bad anchor](docs/guide.md#no-part) '
      '[web](https://example.com/x.md) `[code](not/a/link.md)`\n'
      '```bash\npython -m stau_jax.gone --config=configs/real.py '
      '--config=configs/fake.py\n```\n`tools/gone.py` `configs/<name>.py`\n')
  assert broken_links('README.md', str(tmp_path)) == [
      'docs/gone.md: no such file', 'docs/picture.png: no such file',
      'docs/guide.md#no-part: no heading #no-part']
  assert missing_names('README.md', str(tmp_path)) == [
      'configs/fake.py', 'tools/gone.py', 'python -m stau_jax.gone']
