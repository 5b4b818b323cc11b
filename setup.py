"""Builds the optional oneDNN convolution extension (stau_jax/onednn.py).

Metadata lives in setup.cfg. On Linux x86-64 the build environment brings
jaxlib (for XLA's FFI headers) and the onednn-devel-cpu-gomp wheel (oneDNN's
headers and library, pyproject.toml); elsewhere, or if compiling fails, the
package installs without it and runs XLA's own convolutions.
"""
import importlib.metadata
import importlib.util
import os
import sysconfig

import setuptools

_SOURCE = 'stau_jax/csrc/onednn_conv.cc'


def _distribution_dir(distribution, relative_path):
  """The folder holding `relative_path` (e.g. 'oneapi/dnnl/dnnl.hpp') among
  the files `distribution` installed, or None."""
  try:
    files = importlib.metadata.files(distribution) or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    path = os.path.normpath(str(file.locate()))
    if path.endswith(os.sep + os.path.normpath(relative_path)):
      return path[:-len(relative_path) - 1]
  return None


def _onednn_extension():
  """The extension, or None where its headers are not in the build env."""
  jaxlib = importlib.util.find_spec('jaxlib')
  dnnl_include = _distribution_dir('onednn-devel-cpu-gomp',
                                   'oneapi/dnnl/dnnl.hpp')
  dnnl_lib = _distribution_dir('onednn-cpu-gomp', 'libdnnl.so')
  if jaxlib is None or dnnl_include is None or dnnl_lib is None:
    return None
  jaxlib_include = os.path.join(list(jaxlib.submodule_search_locations)[0],
                                'include')
  return setuptools.Extension(
      'stau_jax._onednn_conv', sources=[_SOURCE],
      include_dirs=[jaxlib_include, dnnl_include,
                    sysconfig.get_paths()['include']],
      library_dirs=[dnnl_lib], libraries=['dnnl'],
      extra_compile_args=['-std=c++17', '-O2', '-w', '-fopenmp'],
      extra_link_args=['-fopenmp'], language='c++',
      optional=True)


extension = _onednn_extension()
setuptools.setup(ext_modules=[extension] if extension else [])
