"""Distillation against a sparse teacher: its top-k token ids and log-probs plus the log of the mass left over.

An offline teacher cache (``teacher=cached``) keeps, per response token, only ``k`` ids, their log-probs at
temperature 1 and ``tail = log(1 - sum of their probabilities)``; a full row would be ``2 * V`` bytes (98 KB for
SmolLM2), the cache row ``8k + 4``.  The loss below is the exact divergence of the two distributions seen through
that partition of the vocabulary.

Definition, per row.  Buckets: the row's k ids, plus one tail bucket holding every other token of the student's
vocabulary.  Teacher: ``p~ = [exp(logprobs_1..k), exp(tail)]``.  Student: ``q = softmax(z')`` over the FULL
vocabulary, ``z' = softcap * tanh(z / softcap) / T`` (``softcap`` optional), ``z = h W^T + b``, coarsened to the
same buckets: ``q~_j = q(id_j)`` and ``q~_tail = 1 - sum_j q(id_j)``, the latter computed in log space as
logsumexp of ``z'`` over the tokens NOT among the row's ids minus logsumexp of ``z'`` over all of them (no
cancellation, no underflow of a small tail).  The loss is ``D_beta(p~ || q~)`` over the k+1 buckets in the
convention of :func:`charlit.kernels.fused_linear_divergence`: ``beta=0`` KL(p~||q~), ``beta=1`` KL(q~||p~),
otherwise ``beta*KL(p~||m) + (1-beta)*KL(q~||m)`` with ``m = beta*p~ + (1-beta)*q~``, and ``0 log 0 = 0``.  A row
whose ``tail`` is -inf (the top-k holds all the teacher's mass) has no teacher tail term, but still sees the
student's tail through the terms that weigh by ``q~`` (``beta > 0``); with ``beta=1`` that makes KL(q~||p~)
+inf whenever the student puts mass outside the ids, as KL does.  By the data-processing inequality this is a
lower bound of the full-vocabulary divergence, equal to it when the k ids cover the whole vocabulary.

Gradient.  With ``l = log q~`` and ``g = dL/dl`` (k+1 numbers per row, closed forms in :func:`bucket_divergence`),
``dl_j/dz'_v = [v = id_j] - q_v`` and ``dl_tail/dz'_v = [v not in ids] q_v / q~_tail - q_v``, so::

    dL/dz'_v = sum_j g_j [v = id_j] + g_tail [v not in ids] r_v - G q_v,   G = sum_b g_b,
    r_v = exp(z'_v - logsumexp_{u not in ids} z'_u)   (softmax over the tail tokens)

i.e. ``g_j - G q(id_j)`` on the ids and ``r_v (g_tail - G q~_tail)`` elsewhere (``q_v = r_v q~_tail`` there).
Nothing is divided by ``q~_tail``, so a vanishing student tail needs no guard; a row with no tail token (k = V)
has no ``r`` at all.  ``dz'/dz`` (softcap, 1/T) is applied as in :mod:`charlit.kernels.torch_chunked`.

Implementation: plain PyTorch on CPU and CUDA, in token tiles of ``B`` rows whose ``[B, V]`` fp32 logits exist
one tile at a time (never ``[N, V]``), with the tiling, GEMM dtype and gradient accumulation of the chunked
backend.  The per-bucket math (``[B, k+1]``) runs in float64: it is tiny and keeps the log-space sums exact.
With a scalar upstream gradient (``"mean"``/``"sum"``) dX, dW and db are computed in the forward, tile by tile,
and only scaled in backward (3 GEMMs: logits, dX, dW; there is no teacher GEMM at all).  ``"none"`` computes
unit-gradient dX rows in the forward when only dX is wanted, and otherwise recomputes each tile in backward
with the per-row upstream gradient (exact, 4 GEMMs).
"""

from __future__ import annotations

import math

import torch

from charlit.kernels._validate import (
    REDUCTIONS,
    check_linear,
    check_scalars,
    compact,
    valid_rows,
)
from charlit.kernels.api import _zero_with_graph
from charlit.kernels.debug import Plan, record_plan
from charlit.kernels.torch_chunked import _gemm_dtype, _GradAcc, _Head, _Workspace, plan_token_tile

LOGPROB_SLACK = 1e-3
"""Teacher log-probs above this are refused: they are logits (or garbage), not log-probabilities."""


# --------------------------------------------------------------------------------------------- the teacher side
@torch.no_grad()
def topk_teacher(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    *,
    tile: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's cache rows: top-``k`` ids, their log-probs and the log of the remaining mass, at temperature 1.

    ``hidden [..., H]``, ``weight [V, H]``.  Returns ``ids`` int64 ``[..., k]`` (most likely first), ``logprobs``
    fp32 ``[..., k]`` and ``tail`` fp32 ``[...]`` = logsumexp of the logits outside the top-k minus the full
    logsumexp (-inf when nothing is left, k = V), so a tiny tail keeps its relative precision instead of being
    ``log(1 - 0.99999...)``.  Token tiles as in the loss (no ``[N, V]`` tensor); no gradients.  ``tile``: rows per
    tile (default from the byte budget).
    """
    check_scalars(1.0, softcap)
    check_linear("", hidden, weight, bias)
    vocab = weight.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, {vocab}] (the lm_head's vocabulary), got {k!r}")
    lead = hidden.shape[:-1]
    x = hidden.reshape(-1, hidden.shape[-1])
    n, dev = x.shape[0], x.device
    dtype = _gemm_dtype(dev, weight)
    head = _Head(weight, bias, 1.0, softcap, dtype)
    ids = torch.empty(n, k, dtype=torch.long, device=dev)
    logprobs = torch.empty(n, k, dtype=torch.float32, device=dev)
    tail = torch.empty(n, dtype=torch.float32, device=dev)
    B = plan_token_tile(n, vocab, 1, tile)
    work = _Workspace(B, vocab, dev)
    for i0 in range(0, n, B):
        i1 = min(n, i0 + B)
        z, _ = head.logits(x[i0:i1].to(dtype), need_fac=False, out=work.get("z", i1 - i0))
        vals, idx = z.topk(k, dim=1)
        lse_rest, _ = _tail_exp_(z, idx)
        lse_all = torch.logaddexp(lse_rest, torch.logsumexp(vals.double(), dim=1))
        ids[i0:i1] = idx
        logprobs[i0:i1] = vals.double() - lse_all.unsqueeze(1)
        tail[i0:i1] = lse_rest - lse_all
    return ids.reshape(*lead, k), logprobs.reshape(*lead, k), tail.reshape(lead)


def _tail_exp_(z: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: ``z <- exp(z - m)`` off the ids and 0 on them, ``m`` = the row max off the ids.

    Returns (float64 logsumexp of ``z`` over the tokens off the ids, -inf where there are none; the fp32 row
    sums of the new ``z``, >= 1 where any token is off the ids, else 0).  Shifting by the tail's own max keeps
    ``exp`` from underflowing however small the tail is next to the top tokens.
    """
    z.scatter_(1, ids, float("-inf"))
    m = z.amax(dim=1)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # no token left: avoid -inf - -inf
    z.sub_(m.unsqueeze(1)).exp_()
    total = z.sum(dim=1)
    return m.double() + total.double().log(), total


# --------------------------------------------------------------------------------------------- bucket divergence
def bucket_divergence(lq: torch.Tensor, lp: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``D_beta(p || q)`` per row over the bucket log-probs ``lq``, ``lp`` ``[r, k+1]`` and ``dL/dlq``.

    ``0 log 0 = 0`` (``torch.where`` on the probability, so a -inf log-prob never meets a 0 weight).  Gradients:
    forward KL ``-p``; reverse KL ``q (lq - lp + 1)``; mixture ``(1-beta) q (lq - lm)`` (the ``d lm / d lq``
    terms cancel: ``beta p / m + (1-beta) q / m = 1``).
    """
    q, p = lq.exp(), lp.exp()
    if beta == 0.0:
        return torch.where(p > 0, p * (lp - lq), 0.0).sum(1), -p
    if beta == 1.0:
        d = torch.where(q > 0, lq - lp, 0.0)
        return (q * d).sum(1), q * (d + 1.0)
    lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1.0 - beta))  # finite wherever p > 0 or q > 0
    tp = torch.where(p > 0, p * (lp - lm), 0.0)
    tq = torch.where(q > 0, q * (lq - lm), 0.0)
    return beta * tp.sum(1) + (1.0 - beta) * tq.sum(1), (1.0 - beta) * tq


def _tile(head: _Head, x, ids, lp, beta, want_grad: bool, work: _Workspace, row_scale=None):
    """Loss rows (fp32) of one token tile and, if wanted, ``d(sum_r w_r loss_r) / dz`` (raw logits) in place."""
    r, k = ids.shape
    s, fac = head.logits(
        x,
        need_fac=want_grad,
        out=work.get("s", r),
        fac_out=work.get("fac", r) if head.softcap is not None and want_grad else None,
    )
    zid = s.gather(1, ids).double()
    lse_tail, total = _tail_exp_(s, ids)  # s <- tail-softmax numerators r_v * total (0 on the ids)
    lse_all = torch.logaddexp(lse_tail, torch.logsumexp(zid, dim=1))
    lq = torch.cat([zid - lse_all.unsqueeze(1), (lse_tail - lse_all).unsqueeze(1)], dim=1)
    loss, g = bucket_divergence(lq, lp, beta)
    if not want_grad:
        return loss.float(), None
    q = lq.exp()
    big_g = g.sum(1)
    g_ids = g[:, :k] - big_g.unsqueeze(1) * q[:, :k]
    total64 = total.double()
    coef = torch.where(total64 > 0, (g[:, k] - big_g * q[:, k]) / total64.clamp_min(1.0), 0.0)
    if row_scale is not None:
        g_ids = g_ids * row_scale.double().unsqueeze(1)
        coef = coef * row_scale.double()
    s.mul_(coef.float().unsqueeze(1))
    s.scatter_(1, ids, g_ids.float())
    head.chain(s, fac)
    return loss.float(), s


class TopKDivergenceFunction(torch.autograd.Function):
    """Sum (or per-row values) of the top-k + tail divergence over already-compacted rows.

    Inputs: student ``x [n, H]``, ``w [V, H]``, ``b [V]`` or None; teacher data ``ids [n, k]`` int64 and bucket
    log-probs ``lp [n, k+1]`` float64 (the k log-probs, then the tail).  Only x, w, b get gradients.
    """

    @staticmethod
    def forward(ctx, x, w, b, ids, lp, beta, temperature, softcap, per_row, tile, grad_enabled):
        dev = x.device
        dtype = _gemm_dtype(dev, w)
        n, vocab = x.shape[0], w.shape[0]
        head = _Head(w, b, temperature, softcap, dtype)
        xc = x.to(dtype)
        # needs_input_grad ignores torch.no_grad(); without this, eval would pay for dX/dW
        need = tuple(bool(g and grad_enabled) for g in ctx.needs_input_grad[:3])
        any_grad = any(need)
        # a per-row upstream gradient can still be applied afterwards to dX rows, not to dW/db
        eager = any_grad and not (per_row and (need[1] or need[2]))
        B = plan_token_tile(n, vocab, 1 + (1 if softcap is not None and any_grad else 0), tile)
        record_plan(Plan("topk_divergence", "torch", n, vocab, B, eager))
        acc = _GradAcc(head, n, xc, *need) if eager else None
        loss = torch.empty(n, dtype=torch.float32, device=dev)
        work = _Workspace(B, vocab, dev)
        for i0 in range(0, n, B):
            i1 = min(n, i0 + B)
            loss[i0:i1], g = _tile(head, xc[i0:i1], ids[i0:i1], lp[i0:i1], beta, eager, work)
            if eager:
                acc.add(i0, i1, g)
            del g
        ctx.meta = (beta, temperature, softcap, per_row, B, eager, x.dtype, w.dtype, dtype)
        if eager:
            ctx.grads = (acc.dx, acc.dw, acc.db)
        elif any_grad:
            ctx.save_for_backward(x, w, b, ids, lp)
        return loss if per_row else loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        beta, temperature, softcap, per_row, B, eager, x_dtype, w_dtype, dtype = ctx.meta
        if eager:
            dx, dw, db = ctx.grads
            ctx.grads = (None, None, None)  # scaled in place below; a second backward would be wrong
            if dx is None and dw is None and db is None:
                raise RuntimeError("TopKDivergenceFunction: backward called twice (retain_graph) is not supported")
            if per_row:  # only dX was computed, with unit upstream gradients (see forward)
                dx = dx.mul_(grad_out.float().unsqueeze(1))
            else:
                dx, dw, db = (None if t is None else t.mul_(grad_out.float()) for t in (dx, dw, db))
        else:
            x, w, b, ids, lp = ctx.saved_tensors
            need = ctx.needs_input_grad
            head = _Head(w, b, temperature, softcap, dtype)
            xc = x.to(dtype)
            n = x.shape[0]
            acc = _GradAcc(head, n, xc, need[0], need[1], need[2])
            scale = grad_out.float() if per_row else grad_out.float().expand(n)
            work = _Workspace(B, w.shape[0], x.device)
            for i0 in range(0, n, B):
                i1 = min(n, i0 + B)
                _, g = _tile(head, xc[i0:i1], ids[i0:i1], lp[i0:i1], beta, True, work, scale[i0:i1])
                acc.add(i0, i1, g)
                del g
            dx, dw, db = acc.dx, acc.dw, acc.db
        return (
            None if dx is None else dx.to(x_dtype),
            None if dw is None else dw.to(w_dtype),
            None if db is None else db.to(w_dtype),
            *[None] * 8,
        )


# --------------------------------------------------------------------------------------------- public op
def _check_teacher(ids, logprobs, tail, lead: torch.Size, device: torch.device) -> None:
    """Types, shapes and devices of the teacher rows (values are checked on the counted rows only)."""
    for name, t in (("teacher_ids", ids), ("teacher_logprobs", logprobs), ("teacher_tail", tail)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_hidden is on {device}; move them to one device")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"teacher_ids has dtype {ids.dtype}; pass integer token ids (int64 or int32)")
    for name, t in (("teacher_logprobs", logprobs), ("teacher_tail", tail)):
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} has dtype {t.dtype}; pass float log-probabilities")
    if ids.dim() != len(lead) + 1 or ids.shape[:-1] != lead or ids.shape[-1] < 1:
        raise ValueError(
            f"teacher_ids has shape {tuple(ids.shape)} but student_hidden has leading shape {tuple(lead)}; expected "
            f"{(*lead, 'k')} (k >= 1 ids per position), aligned with the student's positions"
        )
    if logprobs.shape != ids.shape:
        raise ValueError(
            f"teacher_logprobs has shape {tuple(logprobs.shape)} but teacher_ids has {tuple(ids.shape)}; they must "
            f"match (one log-prob per cached id)"
        )
    if tail.shape != lead:
        raise ValueError(
            f"teacher_tail has shape {tuple(tail.shape)}; expected the student's leading shape {tuple(lead)} "
            f"(one log of left-over mass per position)"
        )


def _check_rows(ids: torch.Tensor, lp: torch.Tensor, vocab: int, where: torch.Tensor | None) -> None:
    """Counted rows only: ids in ``[0, vocab)`` and distinct per row, log-probs <= 0 and not NaN."""
    if ids.numel() == 0:
        return

    def position(row: int) -> int:
        return row if where is None else int(where[row])

    bad = (ids < 0) | (ids >= vocab)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"teacher_ids holds {int(ids[row, col])} at position {position(row)}, outside the student's vocabulary "
            f"[0, {vocab}): the cache was built for another tokenizer or a padded teacher vocabulary; rebuild it for "
            f"this student (ids must index student_weight rows)"
        )
    srt = ids.sort(dim=1).values
    dup = srt[:, 1:] == srt[:, :-1]
    if bool(dup.any()):
        row, col = (int(i) for i in dup.nonzero()[0])
        raise ValueError(
            f"teacher_ids repeats token {int(srt[row, col])} at position {position(row)}: each row's ids must be "
            f"distinct (the teacher's top-k, e.g. from topk_teacher or torch.topk), or the buckets overlap"
        )
    bad = lp.isnan() | (lp > LOGPROB_SLACK)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        what = "teacher_tail" if col == lp.shape[1] - 1 else "teacher_logprobs"
        raise ValueError(
            f"{what} holds {float(lp[row, col])} at position {position(row)}; expected log-probabilities (<= 0, "
            f"not NaN): pass log_softmax values at temperature 1 (not logits), as topk_teacher returns them"
        )


def fused_linear_topk_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: str = "mean",
    num_items: int | float | torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    *,
    tile: int | None = None,
) -> torch.Tensor:
    """Divergence between a cached top-k + tail teacher and the student, from the student's hidden states.

    The exact definition (k+1 buckets, ``q~`` from the full-vocabulary softmax) is in the module docstring.
    ``student_hidden [..., H]``, ``student_weight [V, H]``; ``teacher_ids`` integer ``[..., k]`` (distinct per
    position, < V), ``teacher_logprobs [..., k]`` and ``teacher_tail [...]`` as :func:`topk_teacher` returns them
    (temperature 1; ``temperature`` only scales the student).  ``mask``, ``beta``, ``temperature``,
    ``scale_by_t2``, ``reduction``, ``num_items``, ``student_bias``, ``softcap``: as for
    :func:`charlit.kernels.fused_linear_divergence`.  Gradients reach the student tensors only.  ``tile``: rows
    per token tile (default from the byte budget).  Returns fp32.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_items is not None and reduction != "mean":
        raise ValueError(
            f"num_items only applies to reduction='mean' (got reduction={reduction!r}); drop num_items or use 'mean'"
        )
    check_scalars(temperature, softcap, beta)
    check_linear("student_", student_hidden, student_weight, student_bias)
    lead = student_hidden.shape[:-1]
    dev = student_hidden.device
    _check_teacher(teacher_ids, teacher_logprobs, teacher_tail, lead, dev)
    vocab, k = student_weight.shape[0], teacher_ids.shape[-1]
    if k > vocab:
        raise ValueError(
            f"teacher_ids has k={k} ids per position but the student's vocabulary has only {vocab} tokens; "
            f"ids must be distinct student tokens"
        )
    keep = valid_rows(mask, lead, dev)
    rows = compact(keep, lead)
    ids = rows.take(teacher_ids.detach()).long()
    lp = torch.cat(
        [rows.take(teacher_logprobs.detach()).double(), rows.take(teacher_tail.detach()).double().unsqueeze(1)], dim=1
    )
    _check_rows(ids, lp, vocab, rows.index)
    n = rows.count
    if n == 0:
        zero = _zero_with_graph(student_hidden, student_weight, student_bias)
        return zero + torch.zeros(lead, dtype=torch.float32, device=dev) if reduction == "none" else zero
    out = TopKDivergenceFunction.apply(
        rows.take(student_hidden),
        student_weight,
        student_bias,
        ids,
        lp,
        float(beta),
        float(temperature),
        None if softcap is None else float(softcap),
        reduction == "none",
        tile,
        torch.is_grad_enabled(),
    )
    if scale_by_t2:
        out = out * float(temperature) ** 2
    if reduction == "none":
        return rows.scatter(out)
    if reduction == "sum":
        return out
    if num_items is None:
        return out / n
    if isinstance(num_items, torch.Tensor):
        return out / num_items.to(device=out.device, dtype=torch.float32).clamp_min(1.0)
    return out / max(float(num_items), 1.0)
