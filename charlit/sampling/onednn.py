"""CPU decoding through oneDNN's linear kernels for the frozen weights.

Token-by-token decoding at a small batch is a chain of matrix-vector products bound by reading the weights.
Torch's default fp32 CPU path is slow at that shape; oneDNN's reordered-weight kernel is not.  Measured on
this project's 2-core EPYC: the SmolLM2 lm_head product ``[4, 576] x [576, 49152]`` takes 13.6 ms by default
and 4.9 ms through oneDNN; 64 decode steps of the LoRA-wrapped SmolLM2-135M at batch 4 went from 6.6 s to
3.9 s (and from 4.7 s to 3.1 s for the bare model), with logits equal to 2e-6 relative (fp32, summation order).

Only frozen ``nn.Linear`` weights (``requires_grad`` False: the base layers under LoRA, a tied lm_head) are
reordered, once, and reused while their storage and version counter are unchanged; trainable weights change
every step and are left alone.  The copies cost one more set of those weights in memory (~0.5 GB for
SmolLM2-135M).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch


def supported(model) -> bool:
    """fp32 on CPU with a oneDNN-enabled torch (that still ships ``torch.utils.mkldnn.MkldnnLinear``)."""
    try:
        param = next(model.parameters())
        from torch.utils.mkldnn import MkldnnLinear  # noqa: F401
    except (StopIteration, ImportError):
        return False
    return param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class FrozenLinearCache:
    """oneDNN copies of a model's frozen linear layers, swapped in for the duration of a ``with`` block."""

    def __init__(self):
        self._fast: dict[int, tuple] = {}   # id(linear) -> (weakref to it, weight key, oneDNN module)

    def _fast_linear(self, linear: torch.nn.Linear):
        from torch.utils.mkldnn import MkldnnLinear

        weight = linear.weight
        key = (weight.data_ptr(), weight._version, None if linear.bias is None else linear.bias._version)
        hit = self._fast.get(id(linear))
        if hit is None or hit[0]() is not linear or hit[1] != key:
            hit = self._fast[id(linear)] = (weakref.ref(linear), key, MkldnnLinear(linear, torch.float32))
        return hit[2]

    @contextmanager
    def swapped_in(self, model):
        """Within the block, every frozen fp32 ``nn.Linear`` of ``model`` runs through its oneDNN copy."""
        self._fast = {k: hit for k, hit in self._fast.items() if hit[0]() is not None}  # drop freed layers' copies
        swaps = []
        try:
            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    frozen = type(child) is torch.nn.Linear and not child.weight.requires_grad and (
                        child.bias is None or not child.bias.requires_grad)
                    if frozen and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                        swaps.append((parent, name, child))
                        setattr(parent, name, self._fast_linear(child))
            yield model
        finally:
            for parent, name, child in reversed(swaps):
                setattr(parent, name, child)
