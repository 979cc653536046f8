"""Block sizes for the Triton kernels.

Under ``TRITON_INTERPRET=1`` every program is simulated with numpy, so tiles are small and
fixed (16 x 32 x 16: tl.dot needs >= 16).  On GPU the tiles follow the usual fused-CE
choices (BM 64, BV 128, BK 64, 8 warps for fp16/bf16; BK 32 for fp32 to fit shared memory).
A full ``triton.autotune`` search over these is left to the GPU run plan in
``benchmarks/README.md``; it must never be applied under the interpreter.
"""

from __future__ import annotations

import os

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def upcast(dtype: torch.dtype) -> bool:
    """Upcast loads to fp32 before tl.dot, whose fp32 products then run in full precision (not TF32, like
    torch's default fp32 matmul): always when interpreted (its bf16 math is wrong) and for fp32 inputs; on
    GPU fp16/bf16 feed the tensor cores directly."""
    return interpreted() or dtype == torch.float32


def pick(kind: str, n: int, v: int, h: int, dtype: torch.dtype) -> dict:
    if interpreted():
        return dict(BM=16, BV=32, BK=16)
    if dtype == torch.float32:
        return dict(BM=64, BV=64, BK=32, num_warps=4, num_stages=2)
    return dict(BM=64, BV=128, BK=64, num_warps=8, num_stages=3)


def rows(vocab: int) -> dict:
    """Slice width of the ``triton_rows`` row kernels: one program walks a whole row, so a wide slice (4096 lanes,
    8 warps) keeps enough loads in flight; interpreted, 256 lanes so that small test vocabularies span several."""
    block = min(256 if interpreted() else 4096, 1 << max(vocab - 1, 1).bit_length())
    return dict(BLOCK=block) if interpreted() else dict(BLOCK=block, num_warps=8 if block >= 2048 else 4)
