"""The precision of the chunked CPU losses' lm_head products (logits, dX, dW) under ``trainer.precision=bf16-mixed``.

Outside autocast they run in fp32. Under CPU bf16 autocast the model's own products run in bf16, and so do these
where a bf16 product measured faster than fp32 at the loss's tile shape on this machine (on an Intel Xeon with AMX:
2.1 against 15.0 ms for 512 rows of SmolLM2's 576 → 49152 head); where it does not (an AVX2 processor without native
bf16), fp32 is both faster and exact, so it stays. Products from bf16 operands accumulate in fp32, and their logits
are rounded to bf16 once, as autocast does to a Hugging Face model's own lm_head (and TRL's and Liger-Kernel's losses
under bf16); log-softmax, the divergence, its gradient and every accumulation stay fp32.

``kernels.cpu_gemm`` (``auto`` | ``fp32`` | ``bf16``) forces the choice; ``auto`` times it once per machine and shape
(:func:`charlit.calibration.calibrated_choice`, cached).
"""

from __future__ import annotations

import functools

import torch

from charlit.casts import cpu_bf16_autocast

SETTINGS = ("auto", "fp32", "bf16")
CALIBRATION_ROWS = 256  # a token tile of the loss at SmolLM2's vocabulary (TILE_BUDGET_BYTES / 4 B / V / 2 buffers)
_setting = "auto"


def set_setting(setting: str) -> None:
    """``auto`` (measured), ``fp32`` or ``bf16``: the products' precision under CPU bf16 autocast."""
    global _setting
    if setting not in SETTINGS:
        raise ValueError(f"kernels.cpu_gemm={setting!r}; use one of {', '.join(SETTINGS)}.")
    _setting = setting


def gemm_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of a CPU loss's products with lm_head ``weight`` ``[V, H]``, read in the loss's forward."""
    if not cpu_bf16_autocast() or _setting == "fp32":
        return torch.float32
    if _setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_faster(*weight.shape) == "bf16" else torch.float32


@functools.cache
def bf16_faster(vocab: int, hidden: int) -> str:
    """``bf16`` when a ``[rows, hidden] x [hidden, vocab]`` product with fp32 output runs more than 10 % faster from
    bf16 operands than in fp32 on this machine, else ``fp32`` (timed once, cached)."""
    from charlit.calibration import calibrated_choice

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(CALIBRATION_ROWS, hidden, generator=generator)
    w = torch.randn(vocab, hidden, generator=generator)
    out = torch.empty(CALIBRATION_ROWS, vocab)
    xb, wb = x.bfloat16(), w.bfloat16()

    def fp32() -> None:
        torch.mm(x, w.t(), out=out)

    def bf16() -> None:
        out.copy_(torch.mm(xb, wb.t()))

    with torch.autocast("cpu", enabled=False):
        choice, _ = calibrated_choice(
            "cpu_loss_gemm",
            {"rows": CALIBRATION_ROWS, "hidden": hidden, "vocab": vocab},
            {"fp32": fp32, "bf16": bf16},
            default="fp32",
            margin=0.1,
            repeats=3,
        )
    return choice
