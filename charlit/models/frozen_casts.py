"""Frozen linear weights cast to bf16 once, for CPU autocast.

Under ``trainer.precision=bf16-mixed`` autocast casts every linear layer's fp32 weight to bf16 at every forward (its
cast cache keeps only weights that take gradients). A LoRA run's base weights never change, yet the student's
forward and the frozen teacher's each re-read all of them in fp32 and wrote them again in bf16, every step. Here a
frozen ``nn.Linear`` (``requires_grad`` false) keeps its bf16 copy (:class:`charlit.casts.CastCache`) and uses it
while the weight is the same tensor, unmodified; the product is the one autocast runs (bf16 operands, bf16 out), so
results are identical. Everything else (trainable weights, no autocast, other devices) takes the layer's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from charlit.casts import CastCache, cpu_bf16_autocast

INNER_ATTR = "_charlit_uncached_forward"
CASTS = CastCache()


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if frozen and x.device.type == "cpu" and self.weight.dtype == torch.float32 and cpu_bf16_autocast():
        bias = None if self.bias is None else CASTS.get(self.bias, torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            return F.linear(x.to(torch.bfloat16), CASTS.get(self.weight, torch.bfloat16), bias)
    return getattr(self, INNER_ATTR)(x)


def cache_frozen_casts(model) -> int:
    """Give every ``nn.Linear`` of ``model`` the cached cast, around whatever forward it has now (torch's or
    :func:`charlit.models.onednn.accelerate`'s). Returns how many layers."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and not hasattr(module, INNER_ATTR):
            object.__setattr__(module, INNER_ATTR, module.forward)
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
