"""``triton_rows`` backend: torch (cuBLAS) GEMMs per token tile and ONE fused Triton row pass between them.

Built like the CPU path that wins (``torch_chunked`` with ``fused_rows.cpp``).  For each tile of B token rows:

1. the student and teacher logits GEMMs write raw ``x @ W.T`` as fp32 into two preallocated ``[B, V]`` buffers
   (fp16/bf16 inputs through ``torch.mm(out_dtype=float32)``: cuBLAS accumulates in fp32 and never rounds the
   logits to half);
2. one launch of :mod:`charlit.kernels.triton.rows` does everything row-wise (bias, soft-cap, temperature, both
   log-softmaxes, the divergence, ``d loss / d logits``) and writes that gradient in the GEMM dtype over the start
   of the student buffer;
3. ``dX_tile = G @ W`` and ``dW += G.T @ X_tile`` (fp32 accumulator, ``addmm(out_dtype=float32)`` for half
   inputs), ``db += G.sum(0)``.

Gradients are computed in the forward when the upstream gradient is a scalar (``mean``/``sum``), and only scaled
in the backward: 4 GEMMs in all.  A per-row upstream (``reduction="none"``, log-probs) with a trainable lm_head
keeps the inputs and recomputes each tile in the backward (6 GEMMs for the divergence, 4 for log-probs); with
only dX wanted (frozen lm_head, LoRA) the forward computes unit-gradient dX rows and the backward scales them
(3 and 2 GEMMs).  GEMMs run in the input dtype on GPU and in fp32 on CPU (the interpreter, tests).
"""

from __future__ import annotations

import functools

import torch

from charlit.kernels.debug import Plan, record_plan
from charlit.kernels.torch_chunked import plan_token_tile

TILE_BUDGET_BYTES = 1 << 30
"""fp32 bytes of the two ``[B, V]`` logits buffers of a divergence tile (B 1024 at V 128256)."""
LOGPROB_TILE_BUDGET_BYTES = 256 * 2**20
"""The same for the one buffer of a log-prob tile (log-probs' extra memory is dW plus this)."""


def half_gemm_problem(device: torch.device) -> str:
    """Why fp16/bf16 GEMMs with fp32 outputs do not run on ``device`` ("" when they do): the logits and the dW
    accumulator need ``torch.mm``/``torch.addmm`` with ``out_dtype=torch.float32`` on CUDA."""
    if device.type != "cuda":
        return ""
    return _probe(torch.device(device.type, torch.cuda.current_device() if device.index is None else device.index))


@functools.cache
def _probe(device: torch.device) -> str:
    a = torch.zeros(2, 2, dtype=torch.bfloat16, device=device)
    acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
    try:
        torch.mm(a, a, out_dtype=torch.float32, out=acc)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError) as err:
        return (
            f"torch {torch.__version__} lacks fp32-output half GEMMs (torch.mm/addmm out_dtype=float32 with an fp32 "
            f"accumulator: {str(err).splitlines()[0]}); upgrade torch, or use backend='triton' / 'cuda'"
        )
    return ""


def _gemm_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 stay half on GPU (tensor cores, fp32 outputs); everything else, and everything on CPU, is fp32."""
    half = device.type != "cpu" and dtype in (torch.float16, torch.bfloat16)
    return dtype if half else torch.float32


def _logits(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32:
        return torch.mm(x, w.t(), out=out)
    return torch.mm(x, w.t(), out_dtype=torch.float32, out=out)


def _grad_view(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Where the row kernel writes the gradient: the fp32 logits buffer itself, or (half GEMMs) its rows' first
    halves read as fp16/bf16, so the gradient takes no memory of its own."""
    return buf if dtype == torch.float32 else buf.view(dtype)[:, : buf.shape[1]]


class _Grads:
    """dX rows (GEMM dtype), dW and db (fp32 accumulators) of one head, from per-tile logit gradients."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, need):
        self.x, self.w = x, w
        self.dx = torch.empty_like(x) if need[0] else None
        self.dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need[1] else None
        self.db = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need[2] else None

    def add(self, i0: int, i1: int, g: torch.Tensor) -> None:
        if self.dx is not None:
            torch.mm(g, self.w, out=self.dx[i0:i1])
        if self.dw is not None:
            if g.dtype == torch.float32:
                self.dw.addmm_(g.t(), self.x[i0:i1])
            else:
                torch.addmm(self.dw, g.t(), self.x[i0:i1], out_dtype=torch.float32, out=self.dw)
        if self.db is not None:
            self.db += g.sum(0, dtype=torch.float32)

    def scale(self, grad_out: torch.Tensor, per_row: bool) -> None:
        """Apply the upstream gradient to gradients computed for a unit one (per row: only dX exists)."""
        up = grad_out.float()
        if per_row:
            self.dx.mul_(up.unsqueeze(1))
            return
        for t in (self.dx, self.dw, self.db):
            if t is not None:
                t.mul_(up)

    def result(self, x_dtype: torch.dtype, w_dtype: torch.dtype) -> list:
        dtypes = (x_dtype, w_dtype, w_dtype)
        return [None if t is None else t.to(d) for t, d in zip((self.dx, self.dw, self.db), dtypes)]


def _eager_grads(ctx) -> _Grads:
    grads, ctx.grads = ctx.grads, None  # scaled in place: a second backward would be wrong
    if grads is None:
        raise RuntimeError("triton_rows: backward called twice (retain_graph) is not supported")
    return grads


class _Divergence:
    """One call's heads in GEMM dtype and its tile sweep: logits GEMMs, row kernel, gradient GEMMs."""

    def __init__(self, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, tile):
        self.dtype = _gemm_dtype(xs.device, ws.dtype)
        self.xs, self.ws = xs.to(self.dtype), ws.to(self.dtype).contiguous()
        self.xt, self.wt = xt.to(self.dtype), wt.to(self.dtype).contiguous()
        self.bs, self.bt = (None if b is None else b.contiguous() for b in (bs, bt))
        self.beta, self.inv_t, self.softcap = beta, 1.0 / temperature, softcap
        self.n, self.vocab = xs.shape[0], ws.shape[0]
        self.tile = plan_token_tile(self.n, self.vocab, 2, tile, TILE_BUDGET_BYTES)

    def sweep(self, grads: _Grads | None, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        from charlit.kernels.triton import rows

        loss = torch.empty(self.n, dtype=torch.float32, device=self.xs.device)
        s_buf = torch.empty(self.tile, self.vocab, dtype=torch.float32, device=self.xs.device)
        t_buf = torch.empty_like(s_buf)
        for i0 in range(0, self.n, self.tile):
            i1 = min(self.n, i0 + self.tile)
            s = _logits(self.xs[i0:i1], self.ws, s_buf[: i1 - i0])
            t = _logits(self.xt[i0:i1], self.wt, t_buf[: i1 - i0])
            g = None if grads is None else _grad_view(s, self.dtype)
            scale = None if row_scale is None else row_scale[i0:i1]
            loss[i0:i1] = rows.divergence_rows(s, t, self.bs, self.bt, self.beta, self.inv_t, self.softcap, g, scale)
            if grads is not None:
                grads.add(i0, i1, g)
        return loss


class RowsDivergence(torch.autograd.Function):
    """Sum (or per-row values) of the divergence over compacted rows."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row, tile, grad_enabled):
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        eager = any(need) and not (per_row and (need[1] or need[2]))
        op = _Divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, tile)
        record_plan(Plan("divergence", "triton_rows", op.n, op.vocab, op.tile, eager))
        grads = _Grads(op.xs, op.ws, need) if eager else None
        loss = op.sweep(grads)
        ctx.meta = (beta, temperature, softcap, per_row, tile, eager, xs.dtype, ws.dtype)
        ctx.grads = grads
        if not eager and any(need):
            ctx.save_for_backward(xs, ws, bs, xt, wt, bt)
        return loss if per_row else loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        beta, temperature, softcap, per_row, tile, eager, x_dtype, w_dtype = ctx.meta
        if eager:
            grads = _eager_grads(ctx)
            grads.scale(grad_out, per_row)
        else:
            xs, ws, bs, xt, wt, bt = ctx.saved_tensors
            op = _Divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, tile)
            grads = _Grads(op.xs, op.ws, ctx.needs_input_grad[:3])
            op.sweep(grads, (grad_out.float() if per_row else grad_out.float().expand(op.n)).contiguous())
        return (*grads.result(x_dtype, w_dtype), *[None] * 9)


class RowsLogprobs(torch.autograd.Function):
    """Per-row ``z_y - logsumexp(z)`` over compacted rows (targets all valid)."""

    @staticmethod
    def forward(ctx, x, w, b, y, temperature, softcap, tile, grad_enabled):
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        eager = need[0] and not (need[1] or need[2])
        dtype = _gemm_dtype(x.device, w.dtype)
        xc, wc = x.to(dtype), w.to(dtype).contiguous()
        n, vocab = x.shape[0], w.shape[0]
        rows_per_tile = plan_token_tile(n, vocab, 1, tile, LOGPROB_TILE_BUDGET_BYTES)
        record_plan(Plan("logprobs", "triton_rows", n, vocab, rows_per_tile, eager))
        grads = _Grads(xc, wc, need) if eager else None
        out = _logprob_sweep(xc, wc, b, y.contiguous(), 1.0 / temperature, softcap, rows_per_tile, grads)
        ctx.meta = (temperature, softcap, tile, eager, x.dtype, w.dtype)
        ctx.grads = grads
        if not eager and any(need):
            ctx.save_for_backward(x, w, b, y)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        temperature, softcap, tile, eager, x_dtype, w_dtype = ctx.meta
        if eager:
            grads = _eager_grads(ctx)
            grads.scale(grad_out, per_row=True)
        else:
            x, w, b, y = ctx.saved_tensors
            dtype = _gemm_dtype(x.device, w.dtype)
            xc, wc = x.to(dtype), w.to(dtype).contiguous()
            rows_per_tile = plan_token_tile(x.shape[0], w.shape[0], 1, tile, LOGPROB_TILE_BUDGET_BYTES)
            grads = _Grads(xc, wc, ctx.needs_input_grad[:3])
            up = grad_out.float().contiguous()
            _logprob_sweep(xc, wc, b, y.contiguous(), 1.0 / temperature, softcap, rows_per_tile, grads, up)
        return (*grads.result(x_dtype, w_dtype), *[None] * 5)


def _logprob_sweep(x, w, b, y, inv_t, softcap, tile, grads: _Grads | None, up=None) -> torch.Tensor:
    from charlit.kernels.triton import rows

    n, vocab = x.shape[0], w.shape[0]
    b = None if b is None else b.contiguous()
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    buf = torch.empty(tile, vocab, dtype=torch.float32, device=x.device)
    for i0 in range(0, n, tile):
        i1 = min(n, i0 + tile)
        z = _logits(x[i0:i1], w, buf[: i1 - i0])
        g = None if grads is None else _grad_view(z, x.dtype)
        out[i0:i1] = rows.logprob_rows(z, b, y[i0:i1], inv_t, softcap, g, None if up is None else up[i0:i1])
        if grads is not None:
            grads.add(i0, i1, g)
    return out


def divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row, tile=None):
    """Compacted rows in, sum (or per-row ``[n]``) of the unscaled divergence out."""
    cap = None if softcap is None else float(softcap)
    return RowsDivergence.apply(
        xs, ws, bs, xt, wt, bt, float(beta), float(temperature), cap, per_row, tile, torch.is_grad_enabled()
    )


def logprobs(x, w, b, y, temperature, softcap, tile=None):
    cap = None if softcap is None else float(softcap)
    return RowsLogprobs.apply(x, w, b, y, float(temperature), cap, tile, torch.is_grad_enabled())
