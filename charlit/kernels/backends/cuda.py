"""CUDA C++ ops (:mod:`charlit.kernels.cuda_ext`, sources in ``charlit/kernels/csrc``), compiled on first use.
Needs CUDA tensors and a CUDA toolkit (nvcc) to build; the extension is loaded only when a kernel runs."""

from __future__ import annotations

from .base import KERNEL_BACKENDS, YES, Availability


@KERNEL_BACKENDS.register("cuda")
class CudaBackend:
    def available(self, device):
        if device.type != "cuda":
            return Availability(False, f"the CUDA ops need CUDA tensors (got {device}); use backend='torch' on CPU")
        from torch.utils.cpp_extension import CUDA_HOME

        from charlit.kernels.cuda_ext import sources_problem

        problem = sources_problem()
        if problem:
            return Availability(False, problem)
        if CUDA_HOME is None:
            return Availability(
                False,
                "no CUDA toolkit found to build the CUDA ops (install nvcc or set CUDA_HOME), "
                "or use backend='triton' / 'torch'",
            )
        return YES

    def divergence(self, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
        from charlit.kernels import cuda_ext

        return cuda_ext.divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row)

    def logprobs(self, x, w, b, y, temperature, softcap):
        from charlit.kernels import cuda_ext

        return cuda_ext.logprobs(x, w, b, y, temperature, softcap)
