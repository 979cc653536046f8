"""torch GEMMs per token tile plus one fused Triton row kernel (:mod:`charlit.kernels.triton_rows`): CUDA tensors
(fp16/bf16 need torch's fp32-output half GEMMs), or CPU tensors under ``TRITON_INTERPRET=1`` (tests)."""

from __future__ import annotations

from .base import KERNEL_BACKENDS, YES, Availability
from .triton import TritonBackend


@KERNEL_BACKENDS.register("triton_rows")
class TritonRowsBackend:
    def available(self, device):
        ok = TritonBackend().available(device)
        if not ok:
            return ok
        from charlit.kernels.triton_rows import half_gemm_problem

        problem = half_gemm_problem(device)
        return Availability(False, problem) if problem else YES

    def divergence(self, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
        from charlit.kernels import triton_rows

        return triton_rows.divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row)

    def logprobs(self, x, w, b, y, temperature, softcap):
        from charlit.kernels import triton_rows

        return triton_rows.logprobs(x, w, b, y, temperature, softcap)
