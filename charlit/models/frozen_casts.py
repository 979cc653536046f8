"""Frozen linear weights cast to bf16 once, for CPU autocast.

Under ``trainer.precision=bf16-mixed`` autocast casts every linear layer's fp32 weight to bf16 at every forward (its
cast cache keeps only weights that take gradients). A LoRA run's base weights never change, yet the student's
forward and the frozen teacher's each re-read all of them in fp32 and wrote them again in bf16, every step. Here a
frozen ``nn.Linear`` (``requires_grad`` false) keeps its bf16 copy and uses it while the weight is the same tensor,
unmodified (``_version``); the product is the one autocast runs (bf16 operands, bf16 out), so results are identical.
Everything else (trainable weights, no autocast, other devices) takes the layer's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

INNER_ATTR = "_charlit_uncached_forward"
CAST_ATTR = "_charlit_bf16_cast"


def _bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _cast(module: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight and bias in bf16, cast again only when either tensor changed."""
    weight, bias = module.weight, module.bias
    source = (weight, weight._version, bias, None if bias is None else bias._version)
    held = getattr(module, CAST_ATTR, None)
    if held is None or not _same(held[0], source):
        cast = (weight.detach().to(torch.bfloat16), None if bias is None else bias.detach().to(torch.bfloat16))
        held = (source, *cast)
        object.__setattr__(module, CAST_ATTR, held)  # a plain attribute, not a registered buffer
    return held[1], held[2]


def _same(held: tuple, source: tuple) -> bool:
    """The same weight and bias tensors (identity), at the same versions."""
    return held[0] is source[0] and held[1] == source[1] and held[2] is source[2] and held[3] == source[3]


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if frozen and x.device.type == "cpu" and self.weight.dtype == torch.float32 and _bf16_autocast():
        weight, bias = _cast(self)
        with torch.autocast("cpu", enabled=False):
            return F.linear(x.to(torch.bfloat16), weight, bias)
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
