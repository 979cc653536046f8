"""CPU decoding through oneDNN's linear kernel.

Token-by-token decoding at a small batch is a chain of matrix-vector products. Torch's default fp32 CPU
path is slow at that shape; oneDNN's is not, and ``mkldnn::_linear_pointwise`` (the op torch's inductor
emits for CPU linears) takes and returns ordinary dense tensors, so it needs neither a weight copy nor
per-call layout conversions (``torch.utils.mkldnn.MkldnnLinear`` spends ~30 µs a call on those). Measured on
this project's 2-core EPYC at batch 4 (µs per call): SmolLM2's 576→576 projection 61 → 38, 576→1536 168 → 71,
1536→576 152 → 76, the 576→49152 lm_head 15400 → 6000; results equal to 1e-6 relative (summation order).

Within :func:`swapped_in` every fp32 CPU ``nn.Linear`` of the model runs that way. The op has no autograd:
with gradients enabled a layer falls back to ``F.linear``, so the swap is for sampling under ``no_grad``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def supported(model) -> bool:
    """fp32 on CPU with a oneDNN-enabled torch that has the dense-in/dense-out linear op."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    return (param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class OneDnnLinear(torch.nn.Module):
    """``linear``'s product through oneDNN, reading its current weight (no copy)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    @property
    def weight(self) -> torch.Tensor:   # a drop-in for code that reads the layer's parameters (peft does)
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return F.linear(x, self.linear.weight, self.linear.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.linear.weight, self.linear.bias, "none", [], "")


@contextmanager
def swapped_in(model):
    """Within the block, every fp32 CPU ``nn.Linear`` of ``model`` runs through oneDNN."""
    swaps = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                    swaps.append((parent, name, child))
                    setattr(parent, name, OneDnnLinear(child))
        yield model
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)
