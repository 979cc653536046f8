"""CUDA C++ backend (``charlit/kernels/csrc/fused_losses.cu``, package data), built on first use with
``torch.utils.cpp_extension.load`` and called through ``torch.ops.charlit_kernels``.

The build directory is ``<kernel cache>/torch_extensions-<torch>-<cuda>`` (see :mod:`charlit.kernels.cpu_fused`),
not torch's shared default: it is created private (0700) and refused when someone else could write to it, and the
built library's SHA-256 is recorded beside it; a library whose digest is missing or differs is removed before
torch loads it, so torch builds it again.

Same contract as ``torch_chunked``: compacted rows in; gradients computed in the forward
for scalar upstream gradients (4 GEMMs), recomputed per tile for per-row upstream.
"""

from __future__ import annotations

from pathlib import Path

import torch

from charlit.kernels.cpu_fused import digest_path, kernel_cache, verified
from charlit.paths import exclusive_lock, private_dir, sha256_file, write_private

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "fused_losses.cu"]
NAME = "charlit_fused_losses"
GPU_TILE_BYTES = 512 * 2**20
_loaded = False


def sources_problem() -> str:
    """Why the CUDA sources cannot be used ("" when they are all there)."""
    missing = [str(p) for p in SOURCES if not p.exists()]
    if not missing:
        return ""
    return f"CUDA sources not found: {missing}; reinstall charlit (they ship as package data in charlit/kernels/csrc)"


def build_dir() -> Path:
    return private_dir(kernel_cache() / f"torch_extensions-{torch.__version__}-{torch.version.cuda}")


def _drop_unverified(library: Path) -> None:
    """Remove a library that does not match its recorded digest (an UnsafePathError if it is not ours alone)."""
    if library.exists() and not verified(library):
        library.unlink()


def load() -> None:
    """Compile (cached in :func:`build_dir`) and register the ops once."""
    global _loaded
    if _loaded:
        return
    if not torch.cuda.is_available():
        raise RuntimeError("backend='cuda' needs a CUDA device and a CUDA build of torch; use backend='torch' on CPU")
    if sources_problem():
        raise RuntimeError(sources_problem())
    from torch.utils.cpp_extension import load as _load

    directory = build_dir()
    with exclusive_lock(directory / ".charlit.lock"):
        _drop_unverified(directory / f"{NAME}.so")
        built = _load(
            name=NAME,
            sources=[str(p) for p in SOURCES],
            extra_cuda_cflags=["-O3", "-std=c++17", "--use_fast_math"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
        write_private(digest_path(Path(built)), sha256_file(built))  # load() returns the library's path
    _loaded = True


def _tile(n: int, vocab: int) -> int:
    return int(max(16, min(max(n, 1), GPU_TILE_BYTES // (4 * vocab * 3))))


def _f(x):
    return None if x is None else x.contiguous()


class CudaDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row, grad_enabled):
        load()
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        eager = any(need) and not per_row
        tile = _tile(xs.shape[0], ws.shape[0])
        cap = -1.0 if softcap is None else float(softcap)
        args = (_f(xs), _f(ws), _f(bs), _f(xt), _f(wt), _f(bt))
        loss, dx, dw, db = torch.ops.charlit_kernels.div_fwd(
            *args, beta, temperature, cap, tile, eager and need[0], eager and need[1], eager and need[2]
        )
        ctx.meta = (beta, temperature, cap, tile, per_row, eager, xs.dtype, ws.dtype)
        if eager:
            ctx.grads = (dx, dw, db)
        else:
            ctx.save_for_backward(*args[:3], args[3], args[4], args[5])
        return loss if per_row else loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        beta, temperature, cap, tile, per_row, eager, x_dtype, w_dtype = ctx.meta
        need = ctx.needs_input_grad[:3]
        if eager:
            dx, dw, db = (t if (t is not None and t.numel()) else None for t in ctx.grads)
            ctx.grads = None
            dx, dw, db = (None if t is None else t * grad_out for t in (dx, dw, db))
        else:
            xs, ws, bs, xt, wt, bt = ctx.saved_tensors
            up = grad_out.float() if per_row else grad_out.float().expand(xs.shape[0]).contiguous()
            dx, dw, db = torch.ops.charlit_kernels.div_bwd(
                xs, ws, bs, xt, wt, bt, up, beta, temperature, cap, tile, *need
            )
            dx, dw, db = (t if (t is not None and t.numel()) else None for t in (dx, dw, db))
        return (
            None if dx is None or not need[0] else dx.to(x_dtype),
            None if dw is None or not need[1] else dw.to(w_dtype),
            None if db is None or not need[2] else db.to(w_dtype),
            *[None] * 8,
        )


class CudaLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, y, temperature, softcap):
        load()
        tile = _tile(x.shape[0], w.shape[0])
        cap = -1.0 if softcap is None else float(softcap)
        out, lse = torch.ops.charlit_kernels.lp_fwd(_f(x), _f(w), _f(b), y.contiguous(), temperature, cap, tile)
        ctx.save_for_backward(_f(x), _f(w), _f(b), y.contiguous(), lse)
        ctx.meta = (temperature, cap, tile)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, b, y, lse = ctx.saved_tensors
        temperature, cap, tile = ctx.meta
        need = ctx.needs_input_grad[:3]
        dx, dw, db = torch.ops.charlit_kernels.lp_bwd(
            x, w, b, y, lse, grad_out.float().contiguous(), temperature, cap, tile, *need
        )
        return (
            dx.to(x.dtype) if need[0] else None,
            dw.to(w.dtype) if need[1] else None,
            db.to(w.dtype) if need[2] else None,
            *[None] * 3,
        )


def divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
    return CudaDivergence.apply(
        xs, ws, bs, xt, wt, bt, float(beta), float(temperature), softcap, per_row, torch.is_grad_enabled()
    )


def logprobs(x, w, b, y, temperature, softcap):
    return CudaLogprobs.apply(x, w, b, y, float(temperature), softcap)
