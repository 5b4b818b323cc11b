"""stau_jax: STAU (SpatioTemporal-Aware Unit) video prediction in JAX/Flax.

Importing the package is cheap and never imports TensorFlow.
"""
__version__ = '0.1.0'
