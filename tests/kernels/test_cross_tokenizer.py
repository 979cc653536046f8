"""The cross-tokenizer loss pieces against float64 references that build the full distributions."""

import pytest
import torch

from charlit.kernels.cross_tokenizer import (
    cross_tokenizer_divergence,
    mapped_topk_teacher,
    merged_span_logprobs,
    span_logprobs,
)

H, V_S, V_T = 16, 40, 57


def _setup(seed=0):
    gen = torch.Generator().manual_seed(seed)
    t_w = torch.randn(V_T, H, generator=gen, dtype=torch.float64)
    s_w = torch.randn(V_S, H, generator=gen, dtype=torch.float64)
    # teacher ids 0..V_S-1 map one to one, 10 more map onto existing student ids (duplicates), the rest nowhere
    vmap = torch.full((V_T,), -1, dtype=torch.long)
    vmap[:V_S] = torch.randperm(V_S, generator=gen)
    vmap[V_S : V_S + 10] = torch.randint(0, V_S, (10,), generator=gen)
    return gen, t_w, s_w, vmap


def _reference_mapped(hidden, t_w, vmap, k):
    p = torch.softmax(hidden @ t_w.T, -1)
    mass = torch.zeros(hidden.shape[0], V_S, dtype=torch.float64)
    for t in range(V_T):
        if vmap[t] >= 0:
            mass[:, vmap[t]] += p[:, t]
    top, ids = mass.topk(k, -1)
    return ids, top.log(), (1 - top.sum(-1)).log()


@pytest.mark.parametrize("k", [1, 5, V_S])
def test_mapped_topk_teacher_sums_shared_ids_and_keeps_the_rest_in_the_tail(k):
    gen, t_w, _, vmap = _setup()
    hidden = torch.randn(9, H, generator=gen, dtype=torch.float64)
    ids, lp, tail = mapped_topk_teacher(hidden.float(), t_w.float(), vmap, V_S, k, tile=4)
    ref_ids, ref_lp, ref_tail = _reference_mapped(hidden, t_w, vmap, k)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tail.double(), ref_tail, rtol=1e-5, atol=1e-5)  # unmapped teacher ids are tail mass


def test_mapped_topk_teacher_refuses_k_beyond_the_student_vocabulary():
    _, t_w, _, vmap = _setup()
    with pytest.raises(ValueError, match=r"k must be in \[1, 40\]"):
        mapped_topk_teacher(torch.zeros(2, H), t_w.float(), vmap, V_S, V_S + 1)


def _reference_loss(hidden, s_w, exact_rows, t_exact, span, beta, uld_weight, k, num_items):
    """Float64: D_beta on k+1 buckets at exact rows; ULD of the merged sorted top-k on span groups."""
    logq = torch.log_softmax(hidden @ s_w.T, -1)
    total = hidden.new_zeros(())
    ids, lp, tail = t_exact
    for r, row in enumerate(exact_rows.tolist()):
        q = logq[row].exp()
        q_b = torch.cat([q[ids[r]], (1 - q[ids[r]].sum()).reshape(1)])
        p_b = torch.cat([lp[r].exp(), tail[r].exp().reshape(1)])
        if beta == 0:
            total = total + (p_b * (p_b.log() - q_b.log())).sum()
        elif beta == 1:
            total = total + (q_b * (q_b.log() - p_b.log())).sum()
        else:
            m = beta * p_b + (1 - beta) * q_b
            total = total + beta * (p_b * (p_b / m).log()).sum() + (1 - beta) * (q_b * (q_b / m).log()).sum()
    for rows, targets, teacher_merged in span:
        merged = logq[rows[0]].topk(k).values + sum(logq[r, t] for r, t in zip(rows[1:], targets[1:]))
        total = total + uld_weight * len(rows) * (merged.exp() - teacher_merged.double().exp()).abs().sum()
    return total / num_items


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_cross_tokenizer_divergence_matches_the_float64_reference_in_loss_and_gradients(beta):
    gen, t_w, s_w, vmap = _setup(1)
    k, n = 6, 12
    hidden = torch.randn(n, H, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V_S, (n,), generator=gen)
    exact_rows = torch.tensor([0, 3, 4, 11])
    t_hidden = torch.randn(len(exact_rows), H, generator=gen, dtype=torch.float64)
    t_exact = mapped_topk_teacher(t_hidden.float(), t_w.float(), vmap, V_S, k)
    groups = [[1, 2], [5, 6, 7], [8], [9, 10]]  # span groups of student rows (a 1-token span: different bytes)
    span_rows = torch.tensor([r for g in groups for r in g])
    span_group = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    span_first = torch.tensor([j == 0 for g in groups for j in range(len(g))])
    teacher_merged = torch.log_softmax(torch.randn(len(groups), 30, generator=gen), -1).topk(k).values
    weight = torch.tensor([float(len(g)) for g in groups])
    x = hidden.float().requires_grad_()
    w = s_w.float().requires_grad_()
    loss, parts = cross_tokenizer_divergence(
        x,
        w,
        exact_rows=exact_rows,
        exact_ids=t_exact[0],
        exact_logprobs=t_exact[1],
        exact_tail=t_exact[2],
        span_rows=span_rows,
        span_targets=targets[span_rows],
        span_group=span_group,
        span_first=span_first,
        span_teacher=teacher_merged,
        span_weight=weight,
        beta=beta,
        uld_weight=0.7,
        num_items=n,
    )
    loss.backward()
    xr, wr = hidden.clone().requires_grad_(), s_w.clone().requires_grad_()
    span = [(g, targets[g].tolist(), teacher_merged[i]) for i, g in enumerate(groups)]
    ref_teacher = (t_exact[0], t_exact[1].double(), t_exact[2].double())
    ref = _reference_loss(xr, wr, exact_rows, ref_teacher, span, beta, 0.7, k, n)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(parts["exact"] + 0.7 * parts["span"], loss.detach())


def test_span_logprobs_tiles_agree_with_one_pass_and_merge_adds_the_continuation():
    gen = torch.Generator().manual_seed(3)
    n, k = 300, 4  # more rows than one tile
    hidden, weight = torch.randn(n, H, generator=gen), torch.randn(V_S, H, generator=gen)
    targets = torch.randint(0, V_S, (n,), generator=gen)
    first = torch.zeros(n, dtype=torch.bool)
    first[::3] = True
    group = torch.arange(n) // 3
    realized, top = span_logprobs(hidden, weight, targets, first, k)
    logp = torch.log_softmax(hidden.double() @ weight.double().T, -1)
    torch.testing.assert_close(realized.double(), logp.gather(1, targets[:, None])[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(top.double(), logp[first].topk(k).values, rtol=1e-5, atol=1e-5)
    merged = merged_span_logprobs(realized, top, group, first)
    continuation = realized.double().reshape(-1, 3)[:, 1:].sum(-1)
    torch.testing.assert_close(merged.double(), top.double() + continuation[:, None], rtol=1e-5, atol=1e-5)
