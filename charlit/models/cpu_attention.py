"""Training attention on the CPU under bf16 autocast: fp32 where this machine runs it faster.

Under ``trainer.precision=bf16-mixed`` autocast runs ``scaled_dot_product_attention`` in bf16, and torch's CPU
flash attention computes its backward far slower from bf16 than from fp32 at the short sequences of character
training (Intel Xeon with AMX, 2 cores, 4 rows × 9 heads × 64: forward and backward 6.3 ms from bf16 against 2.2 ms
from fp32 at 100 tokens, 9.8 against 7.8 at 215; at 400 bf16 is the faster, 19.8 against 23.8). So where gradients
flow, the attention runs from fp32 copies of q, k and v (its output cast back to bf16) when a timing of both at the
sequence's length bucket says fp32 is faster by more than 10 %; elsewhere (no gradients, no autocast, other
devices) it is transformers' own SDPA attention. The timing runs once per machine, head shape and bucket (powers of
two from 64), cached with the other calibrations. fp32 attention is the more precise of the two, so the choice
costs no accuracy.

Registered with transformers' attention interface as ``charlit_sdpa``; :func:`use` switches a model's SDPA
attention to it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from charlit.casts import cpu_bf16_autocast

NAME = "charlit_sdpa"
CALIBRATION_ROWS = 4


def _bucket(length: int) -> int:
    return max(64, 1 << (length - 1).bit_length())


@functools.cache
def fp32_faster(heads: int, kv_heads: int, head_dim: int, bucket: int) -> bool:
    """Whether forward and backward of causal attention over ``bucket`` tokens run more than 10 % faster from fp32
    copies of bf16 inputs than from the bf16 inputs themselves on this machine (timed once, cached)."""
    from charlit.calibration import calibrated_choice

    generator = torch.Generator().manual_seed(0)
    shapes = [(CALIBRATION_ROWS, h, bucket, head_dim) for h in (heads, kv_heads, kv_heads)]
    q, k, v = (torch.randn(s, generator=generator).bfloat16().requires_grad_() for s in shapes)

    def run(upcast: bool):
        def go() -> None:
            inputs = (q.float(), k.float(), v.float()) if upcast else (q, k, v)
            out = F.scaled_dot_product_attention(*inputs, is_causal=True, enable_gqa=heads != kv_heads)
            out.to(torch.bfloat16).sum().backward()

        return go

    with torch.autocast("cpu", enabled=False):
        choice, _ = calibrated_choice(
            "cpu_training_attention",
            {"heads": [heads, kv_heads], "head_dim": head_dim, "tokens": bucket, "rows": CALIBRATION_ROWS},
            {"bf16": run(False), "fp32": run(True)},
            default="bf16",
            margin=0.1,
            repeats=3,
        )
    return choice == "fp32"


def attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, from fp32 copies where :func:`fp32_faster` says so for this shape."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        query.device.type == "cpu"
        and cpu_bf16_autocast()
        and torch.is_grad_enabled()
        and fp32_faster(query.shape[1], key.shape[1], query.shape[-1], _bucket(key.shape[-2]))
    ):
        with torch.autocast("cpu", enabled=False):  # else autocast casts them back to bf16 inside SDPA
            out, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return out.to(torch.bfloat16), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use(model) -> bool:
    """Switch a CPU model that attends through SDPA to :func:`attention`; whether it did."""
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    if config is None or param is None or param.device.type != "cpu":
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True
