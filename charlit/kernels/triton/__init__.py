"""Triton kernels with fp32 accumulators: the all-Triton backend (``kernels``/``ops``: tiled linear + log-sum-exp /
divergence) and the row kernels of the ``triton_rows`` backend (``rows``: everything between its torch GEMMs).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests, small shapes).
Import ``charlit.kernels.triton.ops`` and ``.rows`` lazily: ``@triton.jit`` decides interpreted vs compiled
when this package is first imported.
"""
