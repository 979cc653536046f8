"""Triton kernels (:mod:`charlit.kernels.triton`): CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``
(tests). ``triton`` is imported only when a kernel runs: scanning this package must work without it."""

from __future__ import annotations

import importlib.util
import os

from .base import KERNEL_BACKENDS, YES, Availability


@KERNEL_BACKENDS.register("triton")
class TritonBackend:
    def available(self, device):
        if importlib.util.find_spec("triton") is None:
            return Availability(False, "the `triton` package is not installed (pip install 'charlit[triton]')")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return Availability(
                False,
                f"triton needs CUDA tensors (got {device}), or TRITON_INTERPRET=1 set before "
                f"triton is imported; use backend='torch' on CPU",
            )
        return YES

    def divergence(self, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
        from charlit.kernels.triton import ops

        return ops.divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row)

    def logprobs(self, x, w, b, y, temperature, softcap):
        from charlit.kernels.triton import ops

        return ops.logprobs(x, w, b, y, temperature, softcap)
