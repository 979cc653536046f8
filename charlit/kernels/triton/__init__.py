"""Triton backend: tiled linear + log-sum-exp / divergence kernels with fp32 accumulators.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests, small shapes).
Import ``charlit.kernels.triton.ops`` lazily: ``@triton.jit`` decides interpreted vs compiled
when this package is first imported.
"""
