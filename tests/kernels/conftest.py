"""Kernel-test setup.

Without CUDA the Triton kernels can only run in the interpreter, and ``@triton.jit`` picks
interpreted vs compiled when ``charlit.kernels.triton`` is first imported, so the variable
must be set before any test imports it.  On a CUDA machine it is left alone.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
