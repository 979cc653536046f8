"""The top-k + tail divergence (``teacher=cached``) and ``topk_teacher``, against a float64 reference written here.

The reference materialises the ``[N, V]`` logits in float64, builds both bucket distributions explicitly (the tail
mass as a sum over the tokens outside the ids) and differentiates the plain-torch divergence with autograd.
"""

from __future__ import annotations

import math

import pytest
import torch

from charlit.kernels import fused_linear_divergence, fused_linear_topk_divergence, topk_teacher
from charlit.kernels.debug import record_plans

from .helpers import rel_err

TOL = 1e-5


def ref_bucket_loss(hidden, weight, bias, ids, logprobs, tail, beta, temperature=1.0, softcap=None):
    """Per-row D_beta(p~ || q~) in float64 from materialised logits (autograd gives the gradients)."""
    z = hidden.double().reshape(-1, hidden.shape[-1]) @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    q = torch.softmax(z / temperature, dim=-1)
    ids = ids.reshape(-1, ids.shape[-1]).long()
    outside = torch.ones_like(q).scatter(1, ids, 0.0)
    qb = torch.cat([q.gather(1, ids), (q * outside).sum(1, keepdim=True)], dim=1)
    pb = torch.cat([logprobs.reshape(ids.shape).double(), tail.reshape(-1, 1).double()], dim=1).exp()

    def kl(a, b):
        return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(1)

    if beta == 0:
        return kl(pb, qb)
    if beta == 1:
        return kl(qb, pb)
    m = beta * pb + (1 - beta) * qb
    return beta * kl(pb, m) + (1 - beta) * kl(qb, m)


def ref_reduce(per, keep, reduction, num_items=None):
    per = torch.where(keep, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (num_items if num_items is not None else keep.sum().clamp_min(1))


def make(n=37, h=24, v=300, k=8, seed=0, bias=True, scale=2.0):
    """Student leaves and a teacher's top-k rows from an unrelated random teacher."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, h, generator=g) * scale).requires_grad_()
    w = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.5).requires_grad_() if bias else None
    t_logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 2.5
    logp = torch.log_softmax(t_logits, -1)
    top = logp.topk(k, dim=1)
    rest = logp.scatter(1, top.indices, float("-inf")).logsumexp(1)
    return dict(x=x, w=w, b=b, ids=top.indices, lp=top.values.float(), tail=rest.float())


def grads(loss, *leaves, upstream=None):
    wanted = [t for t in leaves if t is not None]
    return torch.autograd.grad(loss, wanted, grad_outputs=upstream)


def check_against_reference(d, beta, temperature=1.0, softcap=None, mask=None, reduction="mean", num_items=None):
    keep = torch.ones(d["x"].shape[0], dtype=torch.bool, device=d["x"].device) if mask is None else mask
    if keep.dtype != torch.bool:
        keep = keep != -100
    kw = dict(beta=beta, temperature=temperature, softcap=softcap)
    got = fused_linear_topk_divergence(
        d["x"],
        d["w"],
        d["ids"],
        d["lp"],
        d["tail"],
        mask=mask,
        reduction=reduction,
        num_items=num_items,
        student_bias=d["b"],
        tile=8,
        **kw,
    )
    per = ref_bucket_loss(d["x"], d["w"], d["b"], d["ids"], d["lp"], d["tail"], **kw)
    ref = ref_reduce(per, keep, reduction, num_items)
    upstream = None
    if reduction == "none":
        upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert got.dtype == torch.float32
    assert rel_err(got.detach(), ref.detach()) < TOL
    got_g = grads(got, d["x"], d["w"], d["b"], upstream=None if upstream is None else upstream.float())
    ref_g = grads(ref, d["x"], d["w"], d["b"], upstream=upstream)
    for name, a, r in zip(("hidden", "weight", "bias"), got_g, ref_g):
        assert rel_err(a, r) < TOL, name


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature, softcap", [(1.0, None), (0.7, 4.0)])
def test_loss_and_gradients_match_float64_reference(beta, temperature, softcap):
    """Several tiles (37 rows in tiles of 8), bias, a mask; softcap and T != 1 in the second case."""
    d = make(seed=int(beta * 10) + int(temperature * 10))
    mask = torch.ones(37, dtype=torch.bool)
    mask[[0, 5, 6, 30]] = False
    check_against_reference(d, beta, temperature, softcap, mask=mask)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions_labels_mask_and_num_items(reduction):
    """-100 labels as the mask; 'none' with a random per-row upstream gradient (recomputed in backward)."""
    d = make(n=20, seed=3)
    labels = torch.arange(20) % 7
    labels[[2, 3, 11]] = -100
    check_against_reference(d, 0.3, mask=labels, reduction=reduction, num_items=50 if reduction == "mean" else None)


def test_num_items_is_clamped_and_tensor_ok():
    d = make(n=6, seed=4, bias=False)
    args = (d["x"], d["w"], d["ids"], d["lp"], d["tail"])
    total = fused_linear_topk_divergence(*args, reduction="sum")
    assert torch.allclose(fused_linear_topk_divergence(*args, num_items=0), total)
    assert torch.allclose(fused_linear_topk_divergence(*args, num_items=torch.tensor(4)), total / 4)


def test_per_row_hidden_only_uses_forward_gradients():
    """A frozen lm_head with reduction='none': dX rows from the forward, scaled in backward, still exact."""
    d = make(n=13, seed=5, bias=False)
    w = d["w"].detach()
    with record_plans() as plans:
        got = fused_linear_topk_divergence(d["x"], w, d["ids"], d["lp"], d["tail"], beta=1.0, reduction="none", tile=4)
    assert [(p.op, p.token_tile, p.grad_in_forward) for p in plans] == [("topk_divergence", 4, True)]
    ref = ref_bucket_loss(d["x"], w, None, d["ids"], d["lp"], d["tail"], 1.0)
    up = torch.linspace(-1, 2, 13)
    (gx,) = torch.autograd.grad(got, d["x"], up)
    (rx,) = torch.autograd.grad(ref, d["x"], up.double())
    assert rel_err(got.detach(), ref.detach()) < TOL and rel_err(gx, rx) < TOL


def test_leading_shape_and_all_rows_masked():
    d = make(n=12, seed=6)
    x3 = d["x"].detach().reshape(3, 4, -1).requires_grad_()
    ids, lp, tail = d["ids"].reshape(3, 4, -1), d["lp"].reshape(3, 4, -1), d["tail"].reshape(3, 4)
    per = fused_linear_topk_divergence(x3, d["w"], ids, lp, tail, reduction="none", student_bias=d["b"])
    ref = ref_bucket_loss(d["x"], d["w"], d["b"], d["ids"], d["lp"], d["tail"], 0.0)
    assert per.shape == (3, 4) and rel_err(per.detach().reshape(-1), ref.detach()) < TOL
    none = torch.zeros(3, 4, dtype=torch.bool)
    zero = fused_linear_topk_divergence(x3, d["w"], ids, lp, tail, mask=none)
    (gx,) = torch.autograd.grad(zero, x3)
    assert zero.item() == 0.0 and gx.abs().max() == 0


def test_no_grad_computes_no_gradients():
    d = make(n=9, seed=8)
    with torch.no_grad(), record_plans() as plans:
        out = fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"], student_bias=d["b"])
    assert not out.requires_grad and [p.grad_in_forward for p in plans] == [False]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_extreme_logits_stay_finite(beta):
    """|z| in the thousands: the student is one-hot in float64 too (so no reference); nothing over/underflows."""
    d = make(n=12, seed=18, scale=500.0)
    loss = fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"], beta=beta, student_bias=d["b"])
    assert torch.isfinite(loss) and all(torch.isfinite(t).all() for t in grads(loss, d["x"], d["w"], d["b"]))


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_row_with_minus_inf_tail(beta):
    """A row whose top-k holds all the teacher's mass: no teacher tail term; the student's tail still counts."""
    d = make(n=10, k=6, seed=9)
    d["lp"][4] = torch.log_softmax(d["lp"][4], 0)  # renormalised over the k ids
    d["tail"][4] = float("-inf")
    check_against_reference(d, beta)


def test_minus_inf_tail_under_reverse_kl_is_infinite():
    """KL(q~||p~) with p~_tail = 0 < q~_tail is +inf for that row (as KL is); the other rows stay finite."""
    d = make(n=5, k=4, seed=10)
    d["lp"][2] = torch.log_softmax(d["lp"][2], 0)
    d["tail"][2] = float("-inf")
    with torch.no_grad():
        per = fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"], beta=1.0, reduction="none")
    assert torch.isinf(per[2]) and torch.isfinite(per[[0, 1, 3, 4]]).all()


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_topk_teacher_matches_float64_topk(softcap):
    g = torch.Generator().manual_seed(11)
    n, h, v, k = 23, 16, 200, 7
    x, w, b = torch.randn(n, h, generator=g) * 2, torch.randn(v, h, generator=g) / 4, torch.randn(v, generator=g)
    ids, lp, tail = topk_teacher(x, w, k, bias=b, softcap=softcap, tile=5)
    z = x.double() @ w.double().t() + b.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp = torch.log_softmax(z, -1)
    ref = logp.topk(k, dim=1)
    assert ids.dtype == torch.long and lp.dtype == torch.float32 and tail.dtype == torch.float32
    assert torch.equal(ids, ref.indices)
    assert rel_err(lp, ref.values) < 1e-6
    rest = 1 - logp.gather(1, ids).exp().sum(1)
    assert torch.allclose(tail.double(), rest.log(), rtol=1e-5, atol=1e-6)
    # k = V: nothing is left, and the leading shape is kept
    ids_all, lp_all, tail_all = topk_teacher(x.reshape(1, n, h), w, v, bias=b, softcap=softcap)
    assert ids_all.shape == (1, n, v) and torch.isneginf(tail_all).all()
    assert torch.allclose(lp_all[0].double().exp().sum(1), torch.ones(n, dtype=torch.float64), atol=1e-5)


def test_topk_teacher_keeps_a_tiny_tail_exact():
    """One dominant logit: 1 - sum(p_topk) would round to 0, the log-space tail does not."""
    w = torch.eye(4)
    x = torch.tensor([[60.0, 0.0, 0.0, 0.0]])
    _, lp, tail = topk_teacher(x, w, 1)
    assert lp.item() == pytest.approx(0.0, abs=1e-12) and tail.item() == pytest.approx(math.log(3) - 60, abs=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature, softcap", [(1.0, None), (1.3, None), (1.0, 5.0)])
def test_all_ids_equals_full_vocabulary_divergence(beta, temperature, softcap):
    """k = V: the buckets are the tokens, so loss and gradients are fused_linear_divergence's (reference backend).

    The teacher weight is used both ways: its cache rows come from ``topk_teacher`` (T 1, the same softcap);
    for T != 1 the teacher hidden states are divided by T, which without softcap or bias is the teacher's z / T.
    """
    g = torch.Generator().manual_seed(12)
    n, h, v = 11, 16, 64
    xs = torch.randn(n, h, generator=g).requires_grad_()
    ws = (torch.randn(v, h, generator=g) / 3).requires_grad_()
    xt = torch.randn(n, h, generator=g) * 1.5
    wt = torch.randn(v, h, generator=g) / 3
    ids, lp, tail = topk_teacher(xt / temperature, wt, v, softcap=softcap)
    assert torch.isneginf(tail).all()
    perm = torch.argsort(torch.rand(n, v, generator=g), dim=1)  # the order of the ids does not matter
    ids, lp = ids.gather(1, perm), lp.gather(1, perm)
    kw = dict(beta=beta, temperature=temperature, softcap=softcap)
    got = fused_linear_topk_divergence(xs, ws, ids, lp, tail, tile=4, **kw)
    ref = fused_linear_divergence(xs, ws, xt, wt, backend="reference", **kw)
    assert rel_err(got.detach(), ref.detach()) < TOL
    for a, r in zip(grads(got, xs, ws), grads(ref, xs, ws)):
        assert rel_err(a, r) < TOL


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_topk_is_a_lower_bound_and_grows_with_k(beta):
    """Data-processing inequality: a coarser partition never increases the divergence (k 4 <= k 16 <= full)."""
    g = torch.Generator().manual_seed(14)
    n, h, v = 40, 32, 256
    xs = torch.randn(n, h, generator=g)
    ws = torch.randn(v, h, generator=g) / 4
    xt = torch.randn(n, h, generator=g)
    wt = torch.randn(v, h, generator=g) / 4
    with torch.no_grad():
        full = fused_linear_divergence(xs, ws, xt, wt, beta=beta, reduction="none", backend="reference").float()
        per_k = []
        for k in (4, 16):
            ids, lp, tail = topk_teacher(xt, wt, k)
            per_k.append(fused_linear_topk_divergence(xs, ws, ids, lp, tail, beta=beta, reduction="none"))
    assert (per_k[0] <= per_k[1] + 1e-5).all() and (per_k[1] <= full + 1e-5).all()
    assert (per_k[0] < full - 1e-3).any()  # and it is a strict bound somewhere


@pytest.mark.parametrize(
    "change, msg",
    [
        (lambda d: d["ids"].__setitem__((3, 1), d["ids"][3, 0].item()), r"repeats token \d+ at position 3.*distinct"),
        (lambda d: d["ids"].__setitem__((2, 0), 300), r"holds 300 at position 2, outside the student's vocabulary"),
        (lambda d: d["ids"].__setitem__((1, 0), -1), r"holds -1 at position 1"),
        (lambda d: d.__setitem__("lp", d["lp"][:, :-1]), r"teacher_logprobs has shape \(6, 7\).*\(6, 8\)"),
        (lambda d: d.__setitem__("tail", d["tail"][:5]), r"teacher_tail has shape \(5,\).*\(6,\)"),
        (lambda d: d.__setitem__("ids", d["ids"][:5]), r"teacher_ids has shape \(5, 8\).*leading shape \(6,\)"),
        (lambda d: d.__setitem__("ids", d["ids"].float()), "teacher_ids has dtype torch.float32"),
        (lambda d: d["lp"].__setitem__((0, 0), 3.0), r"teacher_logprobs holds 3.0.*not logits"),
        (lambda d: d["tail"].__setitem__(4, float("nan")), r"teacher_tail holds nan at position 4"),
    ],
)
def test_bad_teacher_rows_are_rejected(change, msg):
    d = make(n=6, seed=15)
    change(d)
    with pytest.raises(ValueError, match=msg):
        fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"])


def test_bad_rows_are_ignored_where_masked_and_k_larger_than_vocab_is_rejected():
    d = make(n=6, seed=16)
    d["ids"][2] = 0  # padding-like junk on a masked position
    mask = torch.tensor([True, True, False, True, True, True])
    fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"], mask=mask)
    with pytest.raises(ValueError, match="k must be an int in"):
        topk_teacher(d["x"], d["w"], 301)
    with pytest.raises(ValueError, match="beta must lie in"):
        fused_linear_topk_divergence(d["x"], d["w"], d["ids"], d["lp"], d["tail"], beta=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_cuda_matches_reference(beta):
    d = make(seed=17)
    d = {k: (v.detach().cuda().requires_grad_(v.requires_grad) if v is not None else None) for k, v in d.items()}
    mask = torch.ones(37, dtype=torch.bool, device="cuda")
    mask[3] = False
    check_against_reference(d, beta, 0.8, 6.0, mask=mask)
