"""Chunked PyTorch backend (CPU default; also runs on CUDA).

Memory: the hidden rows are processed in token tiles of ``B`` rows; for each tile the full
``[B, V]`` student (and teacher) logits exist, never ``[N, V]``.  Extra memory is therefore
O(B*V + N*H + V*H) (the last two are the gradients themselves).  ``B`` is chosen so the tile
buffers stay under ``TILE_BUDGET_BYTES``.

Speed: every logit is produced by exactly one GEMM when the upstream gradient is a scalar
(reduction "sum"/"mean"): the gradients w.r.t. the student hidden states, lm_head weight
and bias are computed *in the forward pass*, tile by tile, and merely scaled in backward.
That is 4 GEMMs of 2*N*H*V (student logits, teacher logits, dX, dW) instead of 6 for
"recompute in backward" (see ``GRAD_IN_FORWARD`` and ``benchmarks/bench_grad_mode.py``).  A
per-position upstream gradient (``reduction="none"``, and always for log-probs) cannot be
folded into dW ahead of time, so when dW (or db) is wanted those paths keep only the inputs
and recompute each logits tile in backward: 6 GEMMs for the divergence, 4 for log-probs.
When only dX is wanted (frozen lm_head, e.g. LoRA) the per-row gradient is applied to dX rows
computed in the forward: 3 GEMMs for the divergence, 2 for log-probs.

Elementwise work (log-softmax, divergence, its gradient) runs on CPU in one fused pass per row
(``cpu_fused``, C++ built on first use); without a compiler, and on GPU, it runs as eager
torch ops in place on the tile buffers, optionally in row blocks of ``ROW_BLOCK_BYTES``.
"""

from __future__ import annotations

import math

import torch

from charlit.casts import CastCache
from charlit.kernels import cpu_fused, cpu_gemm
from charlit.kernels.debug import Plan, record_plan

TILE_BUDGET_BYTES = 256 * 2**20
"""Upper bound on the fp32 bytes of the [B, V] buffers that live at once for one divergence tile."""
LOGPROB_TILE_BUDGET_BYTES = 64 * 2**20
"""The same for log-prob tiles (one live buffer).  Smaller: DPO runs policy and reference log-probs over
long sequences, and its extra memory is dW plus this; log-probs' time is GEMM-bound either way (measured
at N 2048: 1.13x vs 1.06x the frozen-head floor for 64 vs 256 MiB; 182 vs 374 MB for the DPO case)."""
ROW_BLOCK_BYTES = 1 << 62
"""fp32 bytes per row block for the elementwise passes on CPU.  Default: the whole tile.

Cache-sized blocks (~0.5 MiB) are marginally faster on an idle machine, but each eager op is
an OpenMP parallel region ending in a barrier; with the cores shared (load > cores) every
barrier can wait a scheduler slice for a descheduled thread, and at 0.5 MiB blocks that made
the loss 4.9x the GEMM floor versus 1.7x for whole tiles (H 576, V 49152, load ~6 on 2 cores).
"""
GRAD_IN_FORWARD = True
"""Scalar-upstream divergence: compute dX/dW in forward (4 GEMMs) rather than recompute (6)."""
MIN_TILE = 16


def plan_token_tile(n: int, vocab: int, buffers: int, tile: int | None = None, budget: int | None = None) -> int:
    """Rows per token tile so that ``buffers`` fp32 [B, V] tensors fit ``budget`` (default TILE_BUDGET_BYTES)."""
    if tile is None:
        tile = max(MIN_TILE, (TILE_BUDGET_BYTES if budget is None else budget) // (4 * vocab * buffers))
        if tile >= 64:
            tile = tile // 64 * 64  # GEMM-friendly
    return max(1, min(int(tile), max(n, 1)))


def _row_block(rows: int, vocab: int, device: torch.device) -> int:
    if device.type != "cpu":
        return rows  # one launch per op on GPU; caches are not the bottleneck there
    return max(1, min(rows, ROW_BLOCK_BYTES // (4 * vocab)))


def _gemm_dtype(device: torch.device, weight: torch.Tensor) -> torch.dtype:
    """GPU: the weight's dtype.  CPU: fp32, or bf16 under CPU bf16 autocast where :mod:`cpu_gemm` measured it faster.
    Read in forward; a backward that recomputes tiles takes the forward's dtype from ``ctx.meta``."""
    return cpu_gemm.gemm_dtype(weight) if device.type == "cpu" else weight.dtype


class _Workspace:
    """Reusable [B, V] fp32 buffers, one per name, so tiles do not re-fault fresh pages.

    On CPU every new multi-megabyte tensor is a fresh mmap whose pages are zero-filled on
    first touch; re-using one buffer per role removes that cost.  On GPU the caching
    allocator already does this, so ``get`` returns None there (allocate normally).
    """

    def __init__(self, rows: int, vocab: int, device: torch.device):
        self.rows, self.vocab, self.device = rows, vocab, device
        self.bufs: dict = {}

    def get(self, name: str, rows: int):
        if self.device.type != "cpu":
            return None
        buf = self.bufs.get(name)
        if buf is None:
            buf = self.bufs[name] = torch.empty(self.rows, self.vocab, dtype=torch.float32, device=self.device)
        return buf[:rows]


_casts = CastCache()  # bf16 copies of lm_head weights under CPU autocast, cast once while unchanged


class _Head:
    """One lm_head (weight, bias) in GEMM dtype plus the logit transform z' = cap(z)/T."""

    def __init__(self, weight, bias, temperature, softcap, dtype):
        self.w = _casts.get(weight, dtype)
        self.b = None if bias is None else bias.to(dtype)
        self.inv_t = 1.0 / float(temperature)
        self.softcap = None if softcap is None else float(softcap)
        self.dtype = dtype

    def logits(self, x: torch.Tensor, need_fac: bool = True, out=None, fac_out=None):
        """fp32 scaled logits [r, V] and, with softcap and ``need_fac``, d z'/d z (else None).

        ``out``/``fac_out``: optional fp32 buffers (a product in another dtype is copied into ``out``).
        """
        if out is None or self.dtype != torch.float32:
            z = torch.mm(x, self.w.t()) if self.b is None else torch.addmm(self.b, x, self.w.t())
            z = z.float() if out is None else out.copy_(z)  # no copy when already fp32
        elif self.b is None:
            z = torch.mm(x, self.w.t(), out=out)
        else:
            z = torch.addmm(self.b, x, self.w.t(), out=out)
        fac = None
        if self.softcap is not None:
            z.div_(self.softcap).tanh_()
            if need_fac:
                fac = torch.mul(z, z, out=fac_out) if fac_out is not None else torch.mul(z, z)
                fac.neg_().add_(1.0).mul_(self.inv_t)  # (1 - tanh^2) / T
            z.mul_(self.softcap * self.inv_t)
        elif self.inv_t != 1.0:
            z.mul_(self.inv_t)
        return z, fac

    def chain(self, grad_scaled: torch.Tensor, fac) -> torch.Tensor:
        """d/dz' -> d/dz (in place)."""
        if fac is not None:
            return grad_scaled.mul_(fac)
        if self.inv_t != 1.0:
            grad_scaled.mul_(self.inv_t)
        return grad_scaled


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a, b)


def _log_softmax_(z: torch.Tensor, out=None) -> torch.Tensor:
    """In place: z <- log_softmax(z); returns softmax(z) as a new buffer.

    Computed as (z - max) - log(sum(exp(z - max))) rather than z - logsumexp(z): with
    |z| ~ 1e4 the rounded logsumexp (absolute error ~|z|*eps) would swamp small log-probs.
    The exponentials are reused for the probabilities, so this costs one exp pass.
    """
    z.sub_(z.amax(dim=1, keepdim=True))
    e = torch.exp(z) if out is None else torch.exp(z, out=out)
    total = e.sum(dim=1, keepdim=True)
    z.sub_(total.log())
    return e.div_(total)


def divergence_rows(s: torch.Tensor, t: torch.Tensor, beta: float, want_grad: bool, q_out=None, p_out=None):
    """Per-row generalized JSD and d loss / d s for one block of scaled logits.

    ``s`` (student) and ``t`` (teacher) are fp32 ``[r, V]`` and are overwritten.  Returns
    ``(loss [r], grad [r, V] or None)``; ``grad`` may alias ``s`` or ``t``.

    With g = dL/dq (q = softmax(s)), dL/ds = q * (g - <q, g>).  Forward KL reduces to q - p;
    for beta > 0, g = (1 - beta) * (log q - log m) (m = p when beta = 1); constants in g cancel.
    """
    q = _log_softmax_(s, q_out)  # s = log q
    p = _log_softmax_(t, p_out)  # t = log p
    if beta == 0.0:
        loss = _rowdot(p, t) - _rowdot(p, s)
        if not want_grad:
            return loss, None
        return loss, q.sub_(p)
    if beta == 1.0:
        d = t.neg_().add_(s)  # log q - log p
        if not want_grad:
            return _rowdot(q, d), None
        loss = _center_(d, q)
        return loss, d.mul_(q)
    # Mixture terms through x = log p - log q + log(beta/(1-beta)):
    #   log q - log m = -log(1-beta) - softplus(x),  log p - log m = -log(beta) - softplus(-x)
    # so no log of a (possibly underflowing) sum of probabilities is ever taken, and
    # the gradient keeps full relative precision when q >> p or p >> q.
    x = t.sub_(s).add_(math.log(beta / (1.0 - beta)))
    sp = torch.nn.functional.softplus(x)
    entropy = -beta * math.log(beta) - (1.0 - beta) * math.log(1.0 - beta)
    loss = entropy - beta * (_rowdot(p, sp) - _rowdot(p, x)) - (1.0 - beta) * _rowdot(q, sp)
    if not want_grad:
        return loss, None
    g = sp.mul_(beta - 1.0)  # (1-beta)(log q - log m) up to a per-row constant
    _center_(g, q)
    return loss, g.mul_(q)


def _center_(g: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """In place g <- g - <q, g> per row, with one refinement step; returns <q, g>.

    When q is nearly one-hot, <q, g> is within rounding of g at the argmax and the true
    difference (a small number times large |g|) would be lost; subtracting a first estimate
    and then the (now accurate) residual keeps it.  One extra read pass.
    """
    c = _rowdot(q, g)
    g.sub_(c.unsqueeze(1))
    r = _rowdot(q, g)
    g.sub_(r.unsqueeze(1))
    return c + r


def _divergence_tile(sh: _Head, th: _Head, xs, xt, beta, want_grad, work: _Workspace, row_scale=None):
    """Loss rows for one token tile and, if wanted, d(sum_r w_r loss_r)/d(raw student logits)."""
    r = xs.shape[0]
    s, fac = sh.logits(xs, need_fac=want_grad, out=work.get("s", r), fac_out=work.get("fac", r) if sh.softcap else None)
    t, _ = th.logits(xt, need_fac=False, out=work.get("t", r))
    if cpu_fused.usable(s, t):
        # d/dz' -> d/dz: a plain 1/T folds into the kernel's scale; softcap's factor is per element
        loss = cpu_fused.divergence_rows(s, t, beta, want_grad, row_scale, sh.inv_t if fac is None else 1.0)
        if want_grad and fac is not None:
            s.mul_(fac)
        return loss, (s if want_grad else None)
    rows, vocab = s.shape
    loss = torch.empty(rows, dtype=torch.float32, device=s.device)
    rb = _row_block(rows, vocab, s.device)
    for r0 in range(0, rows, rb):
        r1 = min(rows, r0 + rb)
        qb, pb = work.get("q", rows), work.get("p", rows)
        l, g = divergence_rows(
            s[r0:r1], t[r0:r1], beta, want_grad, None if qb is None else qb[r0:r1], None if pb is None else pb[r0:r1]
        )
        loss[r0:r1] = l
        if want_grad:
            if row_scale is not None:
                g.mul_(row_scale[r0:r1].unsqueeze(1))
            if g.data_ptr() != s[r0:r1].data_ptr():
                s[r0:r1].copy_(g)
            sh.chain(s[r0:r1], None if fac is None else fac[r0:r1])
    del t
    return loss, (s if want_grad else None)


def _tile_buffers(device: torch.device, softmax_buffers: int, extra: int) -> int:
    """Live fp32 [B, V] buffers per tile: the logits (plus softcap factors), and on the eager
    path the ``softmax_buffers`` exp/probability buffers that the fused kernel does without."""
    return extra + (0 if device.type == "cpu" and cpu_fused.available() else softmax_buffers)


class _GradAcc:
    """Accumulates d/dX rows, dW and db of one head from per-tile logit gradients."""

    def __init__(self, head: _Head, n: int, x: torch.Tensor, need_x: bool, need_w: bool, need_b: bool):
        self.head, self.x = head, x
        self.dx = torch.empty(n, x.shape[1], dtype=torch.float32, device=x.device) if need_x else None
        self.dw = torch.zeros_like(head.w, dtype=torch.float32) if need_w else None
        self.db = torch.zeros(head.w.shape[0], dtype=torch.float32, device=x.device) if need_b else None

    def add(self, i0: int, i1: int, g: torch.Tensor) -> None:
        gg = g.to(self.head.dtype)
        if self.dx is not None:
            if self.head.dtype == torch.float32:
                torch.mm(gg, self.head.w, out=self.dx[i0:i1])
            else:
                self.dx[i0:i1] = torch.mm(gg, self.head.w)
        if self.dw is not None:
            if self.head.dtype == torch.float32:
                self.dw.addmm_(gg.t(), self.x[i0:i1])
            else:
                self.dw += torch.mm(gg.t(), self.x[i0:i1]).float()
        if self.db is not None:
            self.db += g.sum(0)


class DivergenceFunction(torch.autograd.Function):
    """Sum (or per-row values) of the divergence over already-compacted rows."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row, tile, grad_enabled):
        dev = xs.device
        dtype = _gemm_dtype(dev, ws)
        n = xs.shape[0]
        sh = _Head(ws, bs, temperature, softcap, dtype)
        th = _Head(wt, bt, temperature, softcap, dtype)
        xs_c, xt_c = xs.to(dtype), xt.to(dtype)
        # needs_input_grad ignores torch.no_grad(); without this, eval would pay for dX/dW
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        any_grad = need[0] or need[1] or need[2]
        # a per-row upstream gradient can still be applied afterwards to dX rows, not to dW/db
        eager = any_grad and GRAD_IN_FORWARD and not (per_row and (need[1] or need[2]))
        B = plan_token_tile(
            n, ws.shape[0], _tile_buffers(dev, 2, 2 + (1 if (softcap is not None and any_grad) else 0)), tile
        )
        record_plan(Plan("divergence", "torch", n, ws.shape[0], B, eager))
        acc = _GradAcc(sh, n, xs_c, need[0], need[1], need[2]) if eager else None
        loss = torch.empty(n, dtype=torch.float32, device=dev)
        work = _Workspace(B, ws.shape[0], dev)
        for i0 in range(0, n, B):
            i1 = min(n, i0 + B)
            l, g = _divergence_tile(sh, th, xs_c[i0:i1], xt_c[i0:i1], beta, eager, work)
            loss[i0:i1] = l
            if eager:
                acc.add(i0, i1, g)
            del g
        ctx.meta = (beta, temperature, softcap, per_row, B, eager, xs.dtype, ws.dtype, dtype)
        if eager:
            ctx.grads = (acc.dx, acc.dw, acc.db)
            ctx.save_for_backward()
        elif any_grad:
            ctx.save_for_backward(xs, ws, bs, xt, wt, bt)
        return loss if per_row else loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        beta, temperature, softcap, per_row, B, eager, x_dtype, w_dtype, dtype = ctx.meta
        need = ctx.needs_input_grad
        if eager:
            dx, dw, db = ctx.grads
            ctx.grads = None  # scaled in place below; a second backward would be wrong
            if dx is None and dw is None and db is None:
                raise RuntimeError("DivergenceFunction: backward called twice (retain_graph) is not supported")
            if per_row:  # only dX was computed (see forward)
                out = [dx.mul_(grad_out.float().unsqueeze(1)), None, None]
            else:
                out = [None if t is None else t.mul_(grad_out) for t in (dx, dw, db)]
        else:
            xs, ws, bs, xt, wt, bt = ctx.saved_tensors
            sh = _Head(ws, bs, temperature, softcap, dtype)
            th = _Head(wt, bt, temperature, softcap, dtype)
            xs_c, xt_c = xs.to(dtype), xt.to(dtype)
            n = xs.shape[0]
            acc = _GradAcc(sh, n, xs_c, need[0], need[1], need[2])
            scale = grad_out.float() if per_row else grad_out.float().expand(n)
            work = _Workspace(B, ws.shape[0], xs.device)
            for i0 in range(0, n, B):
                i1 = min(n, i0 + B)
                _, g = _divergence_tile(sh, th, xs_c[i0:i1], xt_c[i0:i1], beta, True, work, scale[i0:i1])
                acc.add(i0, i1, g)
                del g
            out = [acc.dx, acc.dw, acc.db]
        dx, dw, db = out
        return (
            None if dx is None else dx.to(x_dtype),
            None if dw is None else dw.to(w_dtype),
            None if db is None else db.to(w_dtype),
            *[None] * 9,
        )


def _logprob_tile(head: _Head, x, y, work: _Workspace, want_grad: bool, g=None):
    """Per-row log-prob for one token tile and, with ``want_grad``, the tile's
    ``g * d logp / d z`` (raw logits; ``g`` None: 1) in the logits buffer."""
    rows = x.shape[0]
    z, fac = head.logits(
        x,
        need_fac=want_grad,
        out=work.get("z", rows),
        fac_out=work.get("fac", rows) if head.softcap and want_grad else None,
    )
    if cpu_fused.usable(z):
        out = cpu_fused.logprob_rows(z, y, want_grad, g, head.inv_t if fac is None else 1.0)
        if want_grad and fac is not None:
            z.mul_(fac)
        return out, (z if want_grad else None)
    # The row max and the log-sum of the shifted exps are kept apart: at |z| ~ 1e4 a single
    # fp32 lse loses ~1e-3 absolute, which the gradient's softmax would inherit.
    zmax = z.max(dim=1, keepdim=True).values
    zy = z.gather(1, y.unsqueeze(1))
    z.sub_(zmax)
    log_sum = torch.log(torch.exp(z).sum(dim=1, keepdim=True))
    out = ((zy - zmax) - log_sum).squeeze(1)
    if not want_grad:
        return out, None
    gg = torch.ones_like(out) if g is None else g.float()
    rb = _row_block(rows, z.shape[1], z.device)
    for r0 in range(0, rows, rb):  # d(z_y - lse)/dz' = onehot(y) - softmax(z'), times g
        r1 = min(rows, r0 + rb)
        blk = z[r0:r1]
        blk.sub_(log_sum[r0:r1]).exp_().mul_(-gg[r0:r1].unsqueeze(1))
        blk.scatter_add_(1, y[r0:r1].unsqueeze(1), gg[r0:r1].unsqueeze(1))
        head.chain(blk, None if fac is None else fac[r0:r1])
    return out, z


class LogprobsFunction(torch.autograd.Function):
    """Per-row z_y - logsumexp(z) over already-compacted rows (targets all valid).

    The upstream gradient is per row, so dW needs every logits tile again in backward (4 GEMMs:
    logits, recomputed logits, dX, dW).  When only dX is wanted (a frozen lm_head, as under
    LoRA), the forward computes the unit-gradient rows ``(onehot - softmax) W`` instead and the
    backward just scales them: 2 GEMMs, as many as materialised logits need.
    """

    @staticmethod
    def forward(ctx, x, w, b, y, temperature, softcap, tile, grad_enabled):
        dev = x.device
        dtype = _gemm_dtype(dev, w)
        head = _Head(w, b, temperature, softcap, dtype)
        xc = x.to(dtype)
        n = x.shape[0]
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        eager = need[0] and not (need[1] or need[2]) and GRAD_IN_FORWARD
        extra = 1 + (1 if softcap is not None and any(need) else 0)
        B = plan_token_tile(n, w.shape[0], _tile_buffers(dev, 1, extra), tile, LOGPROB_TILE_BUDGET_BYTES)
        record_plan(Plan("logprobs", "torch", n, w.shape[0], B, eager))
        out = torch.empty(n, dtype=torch.float32, device=dev)
        acc = _GradAcc(head, n, xc, True, False, False) if eager else None
        work = _Workspace(B, w.shape[0], dev)
        for i0 in range(0, n, B):
            i1 = min(n, i0 + B)
            out[i0:i1], d = _logprob_tile(head, xc[i0:i1], y[i0:i1], work, eager)
            if eager:
                acc.add(i0, i1, d)
            del d
        ctx.meta = (temperature, softcap, B, eager, x.dtype, dtype)
        if eager:
            ctx.dx_unit = acc.dx
        elif any(need):
            ctx.save_for_backward(x, w, b, y)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        temperature, softcap, B, eager, x_dtype, dtype = ctx.meta
        if eager:
            dx, ctx.dx_unit = ctx.dx_unit, None  # scaled in place: a second backward would be wrong
            if dx is None:
                raise RuntimeError("LogprobsFunction: backward called twice (retain_graph) is not supported")
            return dx.mul_(grad_out.float().unsqueeze(1)).to(x_dtype), None, None, None, None, None, None, None
        x, w, b, y = ctx.saved_tensors
        need = ctx.needs_input_grad
        head = _Head(w, b, temperature, softcap, dtype)
        xc = x.to(dtype)
        n = x.shape[0]
        acc = _GradAcc(head, n, xc, need[0], need[1], need[2])
        g_all = grad_out.float()
        work = _Workspace(B, w.shape[0], x.device)
        for i0 in range(0, n, B):
            i1 = min(n, i0 + B)
            _, d = _logprob_tile(head, xc[i0:i1], y[i0:i1], work, True, g_all[i0:i1])
            acc.add(i0, i1, d)
            del d
        return (
            None if acc.dx is None else acc.dx.to(x.dtype),
            None if acc.dw is None else acc.dw.to(w.dtype),
            None if acc.db is None else acc.db.to(w.dtype),
            *[None] * 5,
        )


def divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row, tile=None):
    """Compacted rows in, sum (or per-row [n]) of the unscaled divergence out."""
    return DivergenceFunction.apply(
        xs, ws, bs, xt, wt, bt, float(beta), float(temperature), softcap, per_row, tile, torch.is_grad_enabled()
    )


def logprobs(x, w, b, y, temperature, softcap, tile=None):
    return LogprobsFunction.apply(x, w, b, y, float(temperature), softcap, tile, torch.is_grad_enabled())
