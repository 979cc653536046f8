"""Triton kernels.  Layout: hidden X [N, H], weight W [V, H] (row-major, any stride on dim 0).

Three kinds of programs, all recomputing logits tiles Z = X W^T (+ b) -> softcap -> / T:

* ``lse_kernel``       one program per BM rows; online max/sum over vocab blocks -> lse [N]
                       (and optionally z_y for log-probs).
* ``div_stats_kernel`` one program per BM rows; with both lse known, exact log q / log p per
                       tile -> per-row loss and c = <q, g> (the softmax-Jacobian centre).
* ``grad_dx_kernel``   one program per BM rows, loops over vocab: dX rows += G W.
* ``grad_dw_kernel``   one program per BV vocab rows, loops over tokens: dW rows += G^T X,
                       db += sum G.  Ownership of output rows means no atomics, deterministic.

G = d loss / d z (raw logits) for one tile is produced by ``_grad_tile`` from the mode:
0 log-probs (G = u (onehot - softmax)), 1 forward KL, 2 reverse KL, 3 generalized JSD.
All accumulation is fp32; inputs are upcast after load when ``UPCAST`` (always under the
interpreter, whose bf16 arithmetic is wrong; on GPU fp16/bf16 go to tl.dot directly).
"""
import triton
import triton.language as tl


@triton.jit
def _tanh(a):
    # 1 - 2/(exp(2a)+1): saturates cleanly to +-1 for large |a| (no inf/inf)
    return 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)


@triton.jit
def _softplus(x):
    """``max(x, 0) + log1p(exp(-|x|))``; log1p by Goldberg's ``log(u) * y / (u - 1)``, exact where ``1 + y`` rounds
    to 1 (a plain ``log(1 + y)`` returns 0 there, and softplus(x) ~ e^x carries whole gradients when q >> p)."""
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    d = u - 1.0
    return tl.maximum(x, 0.0) + tl.where(d == 0.0, y, tl.log(u) * (y / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, N, V, H, sxn, swv, inv_t, softcap,
                 HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, UPCAST: tl.constexpr,
                 BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """Scaled logits z' [BM, BV] (fp32) and d z'/d z (1/T, or (1 - tanh^2)/T with softcap)."""
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    rmask = rows < N
    cmask = cols < V
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < H
        x = tl.load(x_ptr + rows[:, None] * sxn + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * swv + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:   # fp32 math: "ieee", not Triton's TF32 default (1e-3 relative error on an H100)
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        acc += b[None, :]
    if HAS_CAP:
        th = _tanh(acc / softcap)
        acc = th * softcap
        fac = (1.0 - th * th) * inv_t
    else:
        fac = tl.zeros((BM, BV), dtype=tl.float32) + inv_t
    return acc * inv_t, fac


@triton.jit
def lse_kernel(x_ptr, w_ptr, b_ptr, y_ptr, lse_ptr, zy_ptr, N, V, H, sxn, swv, inv_t, softcap,
               HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, UPCAST: tl.constexpr, PICK: tl.constexpr,
               BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < N
    m = tl.full((BM,), float("-inf"), tl.float32)
    l = tl.zeros((BM,), tl.float32)
    zy = tl.zeros((BM,), tl.float32)
    if PICK:
        y = tl.load(y_ptr + rows, mask=rmask, other=0)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        z, _ = _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, N, V, H, sxn, swv, inv_t, softcap,
                            HAS_BIAS, HAS_CAP, UPCAST, BM, BV, BK)
        z = tl.where((cols < V)[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        if PICK:
            zy += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
    tl.store(lse_ptr + rows, m + tl.log(l), mask=rmask)
    if PICK:
        tl.store(zy_ptr + rows, zy, mask=rmask)


@triton.jit
def _log_probs(s, t, lse_s, lse_t, cmask):
    ls = tl.where(cmask[None, :], s - lse_s[:, None], 0.0)
    lt = tl.where(cmask[None, :], t - lse_t[:, None], 0.0)
    q = tl.where(cmask[None, :], tl.exp(ls), 0.0)
    p = tl.where(cmask[None, :], tl.exp(lt), 0.0)
    return ls, lt, q, p


@triton.jit
def div_stats_kernel(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, lse_s_ptr, lse_t_ptr, loss_ptr, c_ptr,
                     N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio, entropy,
                     MODE: tl.constexpr, HAS_BS: tl.constexpr, HAS_BT: tl.constexpr, HAS_CAP: tl.constexpr,
                     UPCAST: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < N
    lse_s = tl.load(lse_s_ptr + rows, mask=rmask, other=0.0)
    lse_t = tl.load(lse_t_ptr + rows, mask=rmask, other=0.0)
    loss = tl.zeros((BM,), tl.float32)
    c = tl.zeros((BM,), tl.float32)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        cmask = cols < V
        s, _ = _logits_tile(xs_ptr, ws_ptr, bs_ptr, rows, cols, N, V, HS, sxs, sws, inv_t, softcap,
                            HAS_BS, HAS_CAP, UPCAST, BM, BV, BK)
        t, _ = _logits_tile(xt_ptr, wt_ptr, bt_ptr, rows, cols, N, V, HT, sxt, swt, inv_t, softcap,
                            HAS_BT, HAS_CAP, UPCAST, BM, BV, BK)
        ls, lt, q, p = _log_probs(s, t, lse_s, lse_t, cmask)
        if MODE == 1:
            loss += tl.sum(p * (lt - ls), axis=1)
        elif MODE == 2:
            loss += tl.sum(q * (ls - lt), axis=1)
        else:
            x = lt - ls + log_ratio
            sp = _softplus(x)
            loss -= tl.sum(beta * p * (sp - x) + (1.0 - beta) * q * sp, axis=1)
            c += tl.sum(q * (beta - 1.0) * sp, axis=1)
    if MODE == 2:
        c = loss
    if MODE == 3:
        loss += entropy
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(c_ptr + rows, c, mask=rmask)


@triton.jit
def _grad_tile(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, lse_s_ptr, lse_t_ptr, c_ptr, up_ptr,
               rows, cols, N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio,
               MODE: tl.constexpr, HAS_BS: tl.constexpr, HAS_BT: tl.constexpr, HAS_CAP: tl.constexpr,
               UPCAST: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """G = d(sum_r u_r loss_r) / d z_raw for one [BM, BV] tile; 0 outside N x V."""
    rmask = rows < N
    cmask = cols < V
    s, fac = _logits_tile(xs_ptr, ws_ptr, bs_ptr, rows, cols, N, V, HS, sxs, sws, inv_t, softcap,
                          HAS_BS, HAS_CAP, UPCAST, BM, BV, BK)
    lse_s = tl.load(lse_s_ptr + rows, mask=rmask, other=0.0)
    u = tl.load(up_ptr + rows, mask=rmask, other=0.0)
    if MODE == 0:
        y = tl.load(y_ptr + rows, mask=rmask, other=-1)
        q = tl.where(cmask[None, :], tl.exp(s - lse_s[:, None]), 0.0)
        g = tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - q
    else:
        t, _ = _logits_tile(xt_ptr, wt_ptr, bt_ptr, rows, cols, N, V, HT, sxt, swt, inv_t, softcap,
                            HAS_BT, HAS_CAP, UPCAST, BM, BV, BK)
        lse_t = tl.load(lse_t_ptr + rows, mask=rmask, other=0.0)
        ls, lt, q, p = _log_probs(s, t, lse_s, lse_t, cmask)
        if MODE == 1:
            g = q - p
        else:
            c = tl.load(c_ptr + rows, mask=rmask, other=0.0)
            if MODE == 2:
                d = ls - lt
            else:
                d = (beta - 1.0) * _softplus(lt - ls + log_ratio)
            g = q * (d - c[:, None])
    g = g * u[:, None] * fac
    return tl.where(rmask[:, None] & cmask[None, :], g, 0.0)


@triton.jit
def grad_dx_kernel(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, lse_s_ptr, lse_t_ptr, c_ptr, up_ptr,
                   dx_ptr, N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio,
                   MODE: tl.constexpr, HAS_BS: tl.constexpr, HAS_BT: tl.constexpr, HAS_CAP: tl.constexpr,
                   UPCAST: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """dX [N, HS] fp32 (zero-initialised) += G W over all vocab blocks; this program owns BM rows."""
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < N
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        g = _grad_tile(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, lse_s_ptr, lse_t_ptr, c_ptr, up_ptr,
                       rows, cols, N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio,
                       MODE, HAS_BS, HAS_BT, HAS_CAP, UPCAST, BM, BV, BK)
        for k0 in range(0, HS, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < HS
            wmask = (cols < V)[:, None] & kmask[None, :]
            w = tl.load(ws_ptr + cols[:, None] * sws + ks[None, :], mask=wmask, other=0.0)
            if UPCAST:
                part = tl.dot(g, w.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(g.to(w.dtype), w)
            ptrs = dx_ptr + rows[:, None] * HS + ks[None, :]
            m2 = rmask[:, None] & kmask[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=m2, other=0.0) + part, mask=m2)


@triton.jit
def grad_dw_kernel(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, lse_s_ptr, lse_t_ptr, c_ptr, up_ptr,
                   dw_ptr, db_ptr, N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio,
                   MODE: tl.constexpr, HAS_BS: tl.constexpr, HAS_BT: tl.constexpr, HAS_CAP: tl.constexpr,
                   UPCAST: tl.constexpr, NEED_DB: tl.constexpr,
                   BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """dW [V, HS] fp32 (zero-initialised) += G^T X over all token blocks; owns BV vocab rows."""
    pid = tl.program_id(0)
    cols = pid * BV + tl.arange(0, BV)
    cmask = cols < V
    db = tl.zeros((BV,), tl.float32)
    for r0 in range(0, N, BM):
        rows = r0 + tl.arange(0, BM)
        g = _grad_tile(xs_ptr, ws_ptr, bs_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, lse_s_ptr, lse_t_ptr, c_ptr, up_ptr,
                       rows, cols, N, V, HS, HT, sxs, sws, sxt, swt, inv_t, softcap, beta, log_ratio,
                       MODE, HAS_BS, HAS_BT, HAS_CAP, UPCAST, BM, BV, BK)
        if NEED_DB:
            db += tl.sum(g, axis=0)
        for k0 in range(0, HS, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < HS
            xmask = (rows < N)[:, None] & kmask[None, :]
            x = tl.load(xs_ptr + rows[:, None] * sxs + ks[None, :], mask=xmask, other=0.0)
            if UPCAST:
                part = tl.dot(tl.trans(g), x.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(tl.trans(g.to(x.dtype)), x)
            ptrs = dw_ptr + cols[:, None] * HS + ks[None, :]
            m2 = cmask[:, None] & kmask[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=m2, other=0.0) + part, mask=m2)
    if NEED_DB:
        tl.store(db_ptr + cols, db, mask=cmask)
