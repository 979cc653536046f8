"""Chunked PyTorch (:mod:`charlit.kernels.torch_chunked`): runs wherever torch does, so it is the CPU choice and
the last resort on CUDA."""

from __future__ import annotations

from .base import KERNEL_BACKENDS, YES


@KERNEL_BACKENDS.register("torch")
class TorchBackend:
    def available(self, device):
        return YES

    def divergence(self, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
        from charlit.kernels import torch_chunked

        return torch_chunked.divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row)

    def logprobs(self, x, w, b, y, temperature, softcap):
        from charlit.kernels import torch_chunked

        return torch_chunked.logprobs(x, w, b, y, temperature, softcap)
