"""Inference through merged LoRA weights, with the base weights restored bit-exactly afterwards.

A LoRA layer's forward is the base GEMM plus two thin GEMMs and a handful of small ops; in token-by-token
decoding on CPU those extra calls (7 layers × 30 blocks for SmolLM2 with ``all-linear``) cost as much as
the model itself.  ``merged_lora`` swaps each base weight for a fresh ``W + ΔW`` tensor and runs the base
layers alone (``disable_adapter``), then puts the original tensors back.  Unlike peft's
``merge_adapter``/``unmerge_adapter`` (``W += ΔW`` then ``W -= ΔW``) this leaves no rounding drift in the
frozen weights, which also serve as the reference model and the frozen teacher.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def plain_lora_layers(model, dense_base: bool = True) -> list:
    """The active plain-LoRA ``Linear`` layers of a peft model with their active adapter names; [] when
    anything else is in play (not peft, merged or disabled adapters, DoRA-style variants, non-Linear LoRA,
    and with ``dense_base`` base weights that are not plain dense parameters, e.g. sharded)."""
    if not hasattr(model, "disable_adapter"):
        return []
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    layers = []
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
        weight = getattr(module.get_base_layer(), "weight", None)
        odd_base = not isinstance(weight, torch.nn.Parameter) or type(weight.data) is not torch.Tensor
        if (
            not isinstance(module, LoraLinear)
            or module.merged
            or module.disable_adapters
            or any(a in module.lora_variant for a in active)
            or (dense_base and odd_base)
        ):
            return []
        if active:
            layers.append((module, active))
    return layers


@contextmanager
def merged_lora(model):
    """Within the block, ``model`` computes with ``W + ΔW`` in its base layers and no adapter calls.

    For inference only (no gradients reach the LoRA parameters).  A model without mergeable LoRA layers
    is yielded unchanged.
    """
    layers = plain_lora_layers(model)
    if not layers:
        yield model
        return
    originals = []
    try:
        with torch.no_grad():
            for module, active in layers:
                base = module.get_base_layer()
                merged = base.weight.detach().clone()
                for name in active:
                    merged += module.get_delta_weight(name).to(merged.dtype)
                originals.append((base, base.weight))
                base.weight = torch.nn.Parameter(merged, requires_grad=False)
        with model.disable_adapter():
            yield model
    finally:
        for base, weight in originals:
            base.weight = weight
