"""Backend selection.  Every backend module exposes the same two functions over
*compacted* rows (see ``torch_chunked.divergence`` / ``torch_chunked.logprobs``)."""
from __future__ import annotations

import importlib.util
import os

import torch

from ._validate import BACKENDS, check_backend


def triton_usable(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, device: torch.device):
    """Return the backend module for ``backend`` on ``device`` (never 'reference')."""
    check_backend(backend)
    if backend == "auto":
        if device.type == "cuda":
            backend = "triton" if importlib.util.find_spec("triton") is not None else "cuda"
        else:
            backend = "torch"
    if backend == "torch":
        from . import torch_chunked

        return torch_chunked
    if backend == "triton":
        if not triton_usable(device):
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set before triton is "
                f"imported, and the `triton` package; use backend='torch' on CPU"
            )
        from .triton import ops as triton_ops

        return triton_ops
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got {device}; use backend='torch' on CPU")
        from . import cuda_ext

        return cuda_ext
    raise ValueError(f"backend {backend!r} cannot be dispatched here; valid: {BACKENDS}")
