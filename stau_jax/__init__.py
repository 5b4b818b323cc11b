"""stau_jax: STAU (SpatioTemporal-Aware Unit) video prediction in JAX/Flax.

Importing the package is cheap and never imports TensorFlow. Run as a
program (`python -m stau_jax.X`), it first restarts the process once with
glibc's huge-page tunable where that saves page faults (`host_memory`).
"""
from stau_jax import host_memory as _host_memory

__version__ = '0.1.0'
_host_memory.restart_with_huge_pages()
