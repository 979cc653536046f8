"""Decoding from bf16 copies of an fp32 model's linear weights, where the processor makes that faster.

On-policy methods spend most of a step decoding, and a decoding step is a chain of small products that read every
weight once. On an Intel Sapphire Rapids (AMX-bf16) a bf16 product ran 3.6x (large GEMM) to 5.6x (the 350x576->1536
projection) faster than fp32; on the AMD EPYC (AVX2, no native bf16) this project also meets, bf16 products run at
the same speed or up to 5x slower. So ``sampler.precision=auto`` (the default) times the model's own linear shapes
at a decoding step's rows both ways and decodes in bf16 only where that is faster
(:mod:`charlit.calibration`, cached per CPU model, threads and shapes); ``fp32`` / ``bf16`` force a path.

Only the linear layers change (LoRA merged into the copy first); embeddings, norms, attention and the sampling
arithmetic stay fp32. Samples drawn this way are slightly off-policy for the fp32 learner, so the sampler then
reports each drawn token's log-probability and the on-policy objectives reweight their per-token loss with
truncated importance weights (:meth:`charlit.objectives.teacher_objective.TeacherObjective.off_policy_weights`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from charlit.models import onednn
from charlit.models.lora_merge import merged_lora

PRECISIONS = ("auto", "fp32", "bf16")
DECODE_ROWS = 4  # a decoding step's rows at the on-policy methods' batch size


class Bf16Linear(torch.nn.Module):
    """``linear``'s product from a bf16 copy of its weight and bias; fp32 (the input's dtype) in and out."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = linear.weight.detach().to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _linears(model) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    return [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if type(child) is torch.nn.Linear
    ]


@contextmanager
def bf16_linears(model):
    """Within the block (inference only) every ``nn.Linear`` of ``model`` runs from a bf16 copy of its weight, LoRA
    merged in first; the fp32 weights are untouched and back in place afterwards."""
    with merged_lora(model):
        swaps = _linears(model)
        try:
            with torch.no_grad():
                for parent, name, child in swaps:
                    setattr(parent, name, Bf16Linear(child))
            yield model
        finally:
            for parent, name, child in reversed(swaps):
                setattr(parent, name, child)


def calibrate(model, path=None) -> tuple[str, dict]:
    """``(precision, record)``: time the model's distinct linear shapes at :data:`DECODE_ROWS` rows through the fp32
    path decoding would take (oneDNN where the model uses it) and from bf16 copies; ``bf16`` only when faster."""
    from charlit.calibration import calibrated_choice

    layers = {}
    for _, _, layer in _linears(model):
        layers.setdefault((layer.in_features, layer.out_features), layer)
    if not layers:
        return "fp32", {"choice": "fp32", "seconds": {}, "cached": False}
    generator = torch.Generator().manual_seed(0)
    inputs = {n_in: torch.randn(DECODE_ROWS, n_in, generator=generator) for n_in, _ in layers}
    fp32 = onednn.linear if onednn.active(model) else F.linear
    copies = {shape: Bf16Linear(layer) for shape, layer in layers.items()}

    def run_fp32() -> None:
        with torch.no_grad():
            for (n_in, _), layer in layers.items():
                fp32(inputs[n_in], layer.weight, layer.bias)

    def run_bf16() -> None:
        with torch.no_grad():
            for (n_in, _), copy in copies.items():
                copy(inputs[n_in])

    shapes = {"linear": sorted(list(s) for s in layers), "rows": DECODE_ROWS, "fp32": fp32.__module__}
    return calibrated_choice(
        "decode_precision", shapes, {"fp32": run_fp32, "bf16": run_bf16}, default="fp32", margin=0.1, path=path
    )
