"""Autograd wrappers launching the Triton kernels (same contract as ``torch_chunked``).

Divergence: forward = 2 lse launches + 1 stats launch; backward = dX launch + dW launch, each
recomputing logit tiles (deterministic: every output row has one owning program).
Block sizes: fixed small tiles under the interpreter; on GPU ``configs.pick`` (autotuned
variants are only built when not interpreting, since ``triton.autotune`` fails there).
"""

from __future__ import annotations

import math

import torch

from . import configs
from . import kernels as K


def _common(x, w, b):
    x = x.contiguous()
    if w.stride(1) != 1:
        w = w.contiguous()
    return x, w, b


def _lse(x, w, b, inv_t, softcap, y=None):
    n, h = x.shape
    v = w.shape[0]
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    zy = torch.empty(n, dtype=torch.float32, device=x.device) if y is not None else lse
    cfg = configs.pick("lse", n, v, h, x.dtype)
    grid = (triton_cdiv(n, cfg["BM"]),)
    K.lse_kernel[grid](
        x,
        w,
        b if b is not None else x,
        y if y is not None else x,
        lse,
        zy,
        n,
        v,
        h,
        x.stride(0),
        w.stride(0),
        inv_t,
        softcap or 1.0,
        HAS_BIAS=b is not None,
        HAS_CAP=softcap is not None,
        UPCAST=configs.upcast(x.dtype),
        PICK=y is not None,
        **cfg,
    )
    return lse, zy


def triton_cdiv(a, b):
    return (a + b - 1) // b


def _grads(mode, xs, ws, bs, xt, wt, bt, y, lse_s, lse_t, c, up, inv_t, softcap, beta, log_ratio, need):
    n, hs = xs.shape
    v = ws.shape[0]
    ht = hs if xt is None else xt.shape[1]
    dummy = xs
    args_in = (
        xs,
        ws,
        bs if bs is not None else dummy,
        xt if xt is not None else dummy,
        wt if wt is not None else dummy,
        bt if bt is not None else dummy,
        y if y is not None else dummy,
        lse_s,
        lse_t if lse_t is not None else lse_s,
        c if c is not None else lse_s,
        up,
    )
    strides = (
        n,
        v,
        hs,
        ht,
        xs.stride(0),
        ws.stride(0),
        xt.stride(0) if xt is not None else 0,
        wt.stride(0) if wt is not None else 0,
        inv_t,
        softcap or 1.0,
        beta,
        log_ratio,
    )
    flags = dict(
        MODE=mode,
        HAS_BS=bs is not None,
        HAS_BT=bt is not None,
        HAS_CAP=softcap is not None,
        UPCAST=configs.upcast(xs.dtype),
    )
    dx = dw = db = None
    if need[0]:
        dx = torch.zeros(n, hs, dtype=torch.float32, device=xs.device)
        cfg = configs.pick("dx", n, v, hs, xs.dtype)
        K.grad_dx_kernel[(triton_cdiv(n, cfg["BM"]),)](*args_in, dx, *strides, **flags, **cfg)
    if need[1] or need[2]:
        dw = torch.zeros(v, hs, dtype=torch.float32, device=xs.device)
        db = torch.zeros(v, dtype=torch.float32, device=xs.device) if need[2] else dw
        cfg = configs.pick("dw", n, v, hs, xs.dtype)
        K.grad_dw_kernel[(triton_cdiv(v, cfg["BV"]),)](*args_in, dw, db, *strides, **flags, NEED_DB=need[2], **cfg)
        db = db if need[2] else None
        dw = dw if need[1] else None
    return dx, dw, db


def _mode(beta: float) -> int:
    return 1 if beta == 0.0 else 2 if beta == 1.0 else 3


class TritonDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
        xs, ws, bs = _common(xs, ws, bs)
        xt, wt, bt = _common(xt, wt, bt)
        inv_t = 1.0 / temperature
        mode = _mode(beta)
        log_ratio = math.log(beta / (1.0 - beta)) if mode == 3 else 0.0
        entropy = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta) if mode == 3 else 0.0
        lse_s, _ = _lse(xs, ws, bs, inv_t, softcap)
        lse_t, _ = _lse(xt, wt, bt, inv_t, softcap)
        n, v = xs.shape[0], ws.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=xs.device)
        c = torch.empty(n, dtype=torch.float32, device=xs.device)
        cfg = configs.pick("stats", n, v, xs.shape[1], xs.dtype)
        K.div_stats_kernel[(triton_cdiv(n, cfg["BM"]),)](
            xs,
            ws,
            bs if bs is not None else xs,
            xt,
            wt,
            bt if bt is not None else xt,
            lse_s,
            lse_t,
            loss,
            c,
            n,
            v,
            xs.shape[1],
            xt.shape[1],
            xs.stride(0),
            ws.stride(0),
            xt.stride(0),
            wt.stride(0),
            inv_t,
            softcap or 1.0,
            beta,
            log_ratio,
            entropy,
            MODE=mode,
            HAS_BS=bs is not None,
            HAS_BT=bt is not None,
            HAS_CAP=softcap is not None,
            UPCAST=configs.upcast(xs.dtype),
            **cfg,
        )
        ctx.save_for_backward(xs, ws, bs, xt, wt, bt, lse_s, lse_t, c)
        ctx.meta = (mode, inv_t, softcap, beta, log_ratio, per_row)
        return loss if per_row else loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        xs, ws, bs, xt, wt, bt, lse_s, lse_t, c = ctx.saved_tensors
        mode, inv_t, softcap, beta, log_ratio, per_row = ctx.meta
        n = xs.shape[0]
        up = (grad_out.float() if per_row else grad_out.float().expand(n)).contiguous()
        need = ctx.needs_input_grad[:3]
        dx, dw, db = _grads(
            mode, xs, ws, bs, xt, wt, bt, None, lse_s, lse_t, c, up, inv_t, softcap, beta, log_ratio, need
        )
        return (
            None if dx is None else dx.to(xs.dtype),
            None if dw is None else dw.to(ws.dtype),
            None if db is None else db.to(bs.dtype),
            *[None] * 7,
        )


class TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, y, temperature, softcap):
        x, w, b = _common(x, w, b)
        y = y.contiguous()
        inv_t = 1.0 / temperature
        lse, zy = _lse(x, w, b, inv_t, softcap, y=y)
        ctx.save_for_backward(x, w, b, y, lse)
        ctx.meta = (inv_t, softcap)
        return zy - lse

    @staticmethod
    def backward(ctx, grad_out):
        x, w, b, y, lse = ctx.saved_tensors
        inv_t, softcap = ctx.meta
        need = ctx.needs_input_grad[:3]
        dx, dw, db = _grads(
            0,
            x,
            w,
            b,
            *[None] * 3,
            y,
            lse,
            None,
            None,
            grad_out.float().contiguous(),
            inv_t,
            softcap,
            0.0,
            0.0,
            need,
        )
        return (
            None if dx is None else dx.to(x.dtype),
            None if dw is None else dw.to(w.dtype),
            None if db is None else db.to(b.dtype),
            *[None] * 3,
        )


def divergence(xs, ws, bs, xt, wt, bt, beta, temperature, softcap, per_row):
    return TritonDivergence.apply(
        xs, ws, bs, xt, wt, bt, float(beta), float(temperature), None if softcap is None else float(softcap), per_row
    )


def logprobs(x, w, b, y, temperature, softcap):
    return TritonLogprobs.apply(x, w, b, y, float(temperature), None if softcap is None else float(softcap))
