"""Row kernels of the ``triton_rows`` backend: all the row-wise work between its GEMMs, the GPU analogue of
``charlit/kernels/fused_rows.cpp``.

One program owns one token row of a ``[B, V]`` logits tile that a torch matmul wrote (raw ``x @ W.T``, fp32; any
float dtype is upcast after load) and walks it in ``BLOCK``-wide slices.  Bias, soft-cap and ``1/T`` are applied
on load, so no transformed copy and no soft-cap factor buffer exist; the chain factor ``d z'/d z`` is recomputed
where the gradient is written.

* Pass 1 keeps per-lane online max/sum of student and teacher (one fp32 vector each, reduced once at the end),
  and for ``beta`` 0 / 1 the online ``<p, t - s>`` / ``<q, s - t>``, which is the loss: one read of each row.
* Pass 2 (generalized JSD only) needs both log-sum-exps before its softplus terms: loss and centre ``<q, g>``.
* Last pass (``WANT_GRAD``): ``u * d loss / d z`` per element, stored in the gradient's dtype over the start of
  the student row: ``g_ptr`` may alias ``s_ptr``, since gradient slice k (fp32 or half width) only overwrites
  bytes of student slices <= k, which this pass has already read.

Each row max is kept apart from its log-sum (``(z - max) - log_sum``, as ``fused_rows.cpp`` does): one fp32
log-sum-exp at ``|z| ~ 1e4`` would carry ~1e-3 absolute error into every probability.

Log-probs: pass 1 online max/sum plus one load of ``z_y``; pass 2 ``u * (onehot(y) - softmax) * d z'/d z``.
"""

import math

import torch
import triton
import triton.language as tl

from . import configs
from .kernels import _softplus, _tanh


@triton.jit
def _transform(z, inv_t, softcap, HAS_CAP: tl.constexpr):
    """Scaled logits ``cap(z) / T`` and ``d z'/d z`` from raw fp32 logits (bias added)."""
    if HAS_CAP:
        th = _tanh(z / softcap)
        z = th * softcap
        fac = (1.0 - th * th) * inv_t
    else:
        fac = tl.zeros_like(z) + inv_t
    return z * inv_t, fac


@triton.jit
def _load(row_ptr, b_ptr, cols, mask, inv_t, softcap, HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr):
    """Scaled logits ``cap(z + b) / T`` in fp32 and ``d z'/d z`` at ``cols`` (raw 0 where masked off)."""
    z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return _transform(z, inv_t, softcap, HAS_CAP)


@triton.jit
def _online(m, x):
    """Per-lane online log-sum-exp step: the new max, the factor that rescales sums kept against the old one,
    and ``exp(x - new max)``."""
    m_new = tl.maximum(m, x)
    ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # lanes with nothing yet: sums stay 0, not NaN
    return m_new, tl.exp(m - ref), tl.exp(x - ref)


@triton.jit
def _reduce(m, acc):
    """Row max and ``sum exp(x - max) * (...)`` from per-lane maxima and sums kept against them."""
    big = tl.max(m, axis=0)
    return big, tl.sum(acc * tl.exp(m - big), axis=0)


@triton.jit
def _gap(m, big):
    """``m - big`` for lane maxima ``m <= big``; 0 on lanes that saw nothing yet (their sums are 0), without the
    ``-inf - -inf`` a plain subtraction would evaluate there."""
    empty = m == float("-inf")
    return tl.where(empty, 0.0, m) - tl.where(empty, 0.0, big)


@triton.jit
def divergence_rows_kernel(
    s_ptr,
    t_ptr,
    bs_ptr,
    bt_ptr,
    g_ptr,
    scale_ptr,
    loss_ptr,
    V,
    ld_s,
    ld_t,
    ld_g,
    inv_t,
    softcap,
    beta,
    log_ratio,
    entropy,
    MODE: tl.constexpr,
    HAS_BS: tl.constexpr,
    HAS_BT: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WANT_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """MODE 1: KL(p||q), 2: KL(q||p), 3: generalized JSD; q = softmax(student s), p = softmax(teacher t)."""
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * ld_s
    t_row = t_ptr + row * ld_t
    lanes = tl.arange(0, BLOCK)
    ms = tl.full((BLOCK,), float("-inf"), tl.float32)
    mt = tl.full((BLOCK,), float("-inf"), tl.float32)
    rt = tl.zeros((BLOCK,), tl.float32)  # teacher logit where the lane's student max sits (beta > 0)
    ls = tl.zeros((BLOCK,), tl.float32)
    lt = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):
        cols = v0 + lanes
        mask = cols < V
        s, _ = _load(s_row, bs_ptr, cols, mask, inv_t, softcap, HAS_BS, HAS_CAP)
        t, _ = _load(t_row, bt_ptr, cols, mask, inv_t, softcap, HAS_BT, HAS_CAP)
        ms_old = ms
        rt_old = rt
        ms, alpha_s, es = _online(ms, tl.where(mask, s, float("-inf")))
        mt, alpha_t, et = _online(mt, tl.where(mask, t, float("-inf")))
        if MODE != 1:
            rt = tl.where(mask & (s > ms_old), t, rt)
        if MODE == 1:  # sum e^t (t - s), kept against the teacher's lane max
            acc = acc * alpha_t + et * tl.where(mask, t - s, 0.0)
        if MODE == 2:  # sum e^s ((s - ms) - (t - rt)): log q - log p against the lane's student argmax
            moved = _gap(ms_old, ms) - (rt_old - rt)
            acc = (acc + ls * moved) * alpha_s + es * tl.where(mask, (s - ms) - (t - rt), 0.0)
        ls = ls * alpha_s + es
        lt = lt * alpha_t + et
    # each max stays apart from its log-sum: (z - max) is exact near the top, one fp32 lse at |z| ~ 1e4 is not
    max_s, zs = _reduce(ms, ls)
    max_t, zt = _reduce(mt, lt)
    log_zs = tl.log(zs)
    log_zt = tl.log(zt)
    # centres are kept against the student's argmax (teacher logit t_ref there): at that token the gradient's
    # (value - centre) is a difference of two nearly equal numbers as large as |log p| ~ 1e4, which fp32 loses
    t_ref = tl.max(tl.where(ms == max_s, rt, float("-inf")), axis=0)
    centre = 0.0
    if MODE == 1:  # <p, t - s> - lse_t + lse_s = <p, log p - log q>
        _, a = _reduce(mt, acc)
        loss = a / zt + ((max_s - max_t) + (log_zs - log_zt))
    elif MODE == 2:  # centre = <q, (s - max_s) - (t - t_ref)>; KL(q||p) = centre + (max_t - t_ref) + lse_t - lse_s
        moved = _gap(ms, max_s) - (rt - t_ref)
        centre = tl.sum((acc + ls * moved) * tl.exp(ms - max_s), axis=0) / zs
        loss = centre + ((max_t - t_ref) + (log_zt - log_zs))
    else:  # beta KL(p||m) + (1-beta) KL(q||m) via x = log p - log q + log(beta/(1-beta)), as torch_chunked
        shift = (log_zs - log_zt) + log_ratio
        sp_ref = _softplus((t_ref - max_t) + shift)
        lacc = tl.zeros((BLOCK,), tl.float32)
        cacc = tl.zeros((BLOCK,), tl.float32)
        for v0 in range(0, V, BLOCK):
            cols = v0 + lanes
            mask = cols < V
            s, _ = _load(s_row, bs_ptr, cols, mask, inv_t, softcap, HAS_BS, HAS_CAP)
            t, _ = _load(t_row, bt_ptr, cols, mask, inv_t, softcap, HAS_BT, HAS_CAP)
            q = tl.where(mask, tl.exp((s - max_s) - log_zs), 0.0)
            p = tl.where(mask, tl.exp((t - max_t) - log_zt), 0.0)
            x = tl.where(mask, ((t - max_t) - (s - max_s)) + shift, 0.0)
            sp = _softplus(x)
            lacc += beta * p * (sp - x) + (1.0 - beta) * q * sp
            cacc += q * (sp - sp_ref)
        loss = entropy - tl.sum(lacc, axis=0)
        centre = (beta - 1.0) * tl.sum(cacc, axis=0)
    tl.store(loss_ptr + row, loss)
    if WANT_GRAD:
        u = 1.0
        if HAS_SCALE:
            u = tl.load(scale_ptr + row).to(tl.float32)
        g_row = g_ptr + row * ld_g
        for v0 in range(0, V, BLOCK):
            cols = v0 + lanes
            mask = cols < V
            s, fac = _load(s_row, bs_ptr, cols, mask, inv_t, softcap, HAS_BS, HAS_CAP)
            t, _ = _load(t_row, bt_ptr, cols, mask, inv_t, softcap, HAS_BT, HAS_CAP)
            q = tl.exp((s - max_s) - log_zs)
            if MODE == 1:
                g = q - tl.exp((t - max_t) - log_zt)
            elif MODE == 2:
                g = q * (((s - max_s) - (t - t_ref)) - centre)
            else:
                g = q * ((beta - 1.0) * (_softplus(((t - max_t) - (s - max_s)) + shift) - sp_ref) - centre)
            tl.store(g_row + cols, (g * (u * fac)).to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def logprob_rows_kernel(
    z_ptr,
    b_ptr,
    y_ptr,
    g_ptr,
    up_ptr,
    out_ptr,
    V,
    ld_z,
    ld_g,
    inv_t,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_UP: tl.constexpr,
    WANT_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``log_softmax(z')[y]``; the row max and the log-sum stay apart (at ``|z| ~ 1e4`` one fp32 lse loses 1e-3)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * ld_z
    lanes = tl.arange(0, BLOCK)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):
        cols = v0 + lanes
        mask = cols < V
        z, _ = _load(z_row, b_ptr, cols, mask, inv_t, softcap, HAS_BIAS, HAS_CAP)
        m, alpha, e = _online(m, tl.where(mask, z, float("-inf")))
        l = l * alpha + e
    big, total = _reduce(m, l)
    log_sum = tl.log(total)
    y = tl.load(y_ptr + row)
    zy = tl.load(z_row + y).to(tl.float32)
    if HAS_BIAS:
        zy += tl.load(b_ptr + y).to(tl.float32)
    zy, _ = _transform(zy, inv_t, softcap, HAS_CAP)
    tl.store(out_ptr + row, (zy - big) - log_sum)
    if WANT_GRAD:
        u = 1.0
        if HAS_UP:
            u = tl.load(up_ptr + row).to(tl.float32)
        g_row = g_ptr + row * ld_g
        for v0 in range(0, V, BLOCK):
            cols = v0 + lanes
            mask = cols < V
            z, fac = _load(z_row, b_ptr, cols, mask, inv_t, softcap, HAS_BIAS, HAS_CAP)
            g = tl.where(cols == y, 1.0, 0.0) - tl.exp((z - big) - log_sum)
            tl.store(g_row + cols, (g * (u * fac)).to(g_ptr.dtype.element_ty), mask=mask)


def _mode(beta: float) -> int:
    return 1 if beta == 0.0 else 2 if beta == 1.0 else 3


def divergence_rows(s, t, bs, bt, beta, inv_t, softcap, grad=None, row_scale=None) -> torch.Tensor:
    """Per-row divergence of the raw logits ``s`` (student) and ``t`` (teacher), ``[r, V]`` with unit stride along
    the vocabulary; ``bs``/``bt`` biases or None.  With ``grad`` (``[r, V]``, may alias ``s`` as described above),
    it receives ``row_scale * d loss / d s`` (``row_scale`` None: 1)."""
    rows, vocab = s.shape
    mode = _mode(beta)
    log_ratio = math.log(beta / (1.0 - beta)) if mode == 3 else 0.0
    entropy = -beta * math.log(beta) - (1.0 - beta) * math.log(1.0 - beta) if mode == 3 else 0.0
    loss = torch.empty(rows, dtype=torch.float32, device=s.device)
    g = s if grad is None else grad
    divergence_rows_kernel[(rows,)](
        s,
        t,
        s if bs is None else bs,
        t if bt is None else bt,
        g,
        loss if row_scale is None else row_scale,
        loss,
        vocab,
        s.stride(0),
        t.stride(0),
        g.stride(0),
        inv_t,
        1.0 if softcap is None else softcap,
        beta,
        log_ratio,
        entropy,
        MODE=mode,
        HAS_BS=bs is not None,
        HAS_BT=bt is not None,
        HAS_CAP=softcap is not None,
        HAS_SCALE=row_scale is not None,
        WANT_GRAD=grad is not None,
        **configs.rows(vocab),
    )
    return loss


def logprob_rows(z, b, y, inv_t, softcap, grad=None, up=None) -> torch.Tensor:
    """``log_softmax(cap(z + b) / T)[y]`` per row of the raw logits ``z`` ``[r, V]``; with ``grad`` (may alias ``z``),
    it receives ``up * d logp / d z`` (``up`` None: 1)."""
    rows, vocab = z.shape
    out = torch.empty(rows, dtype=torch.float32, device=z.device)
    g = z if grad is None else grad
    logprob_rows_kernel[(rows,)](
        z,
        z if b is None else b,
        y,
        g,
        out if up is None else up,
        out,
        vocab,
        z.stride(0),
        g.stride(0),
        inv_t,
        1.0 if softcap is None else softcap,
        HAS_BIAS=b is not None,
        HAS_CAP=softcap is not None,
        HAS_UP=up is not None,
        WANT_GRAD=grad is not None,
        **configs.rows(vocab),
    )
    return out
