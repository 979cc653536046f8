"""Distillation from a teacher with another tokenizer: the two pieces of the loss, after GOLD (TRL) and ULD.

The student's response is cut into groups that spell the same bytes on both sides
(:mod:`charlit.teachers.alignment`).

*Exact groups* (one token each side, the same bytes) keep a full divergence: the teacher's next-token
distribution is read over the student's vocabulary through the byte-identical token map (teacher ids with the
same bytes add up; teacher tokens the student lacks go to the tail), kept as its top-k plus that tail
(:func:`mapped_topk_teacher`), and compared with the student's full softmax by
:func:`charlit.kernels.fused_linear_topk_divergence`: the exact β-divergence over the k+1 buckets.

*Span groups* (a student token and a teacher token that do not spell the same bytes: a word split differently)
have no shared vocabulary position, so each side is first merged over the span: its distribution at the span's
first token, scaled by the probability it gives the rest of the span's realised tokens,
``m(v) = p_1(v) * prod_{j>1} p_j(y_j)`` (the realised first token's entry is then the probability of the whole
span), and the two merged vectors are compared as Universal Logit Distillation does, by the L1 distance of
their sorted top-k values: ``ULD = sum_i |sort(m_T)_i - sort(m_S)_i|``, i < k. It needs no token identities,
so it is a weaker signal (it matches the confidence profile, not which token), and is weighted by the span's
number of student tokens times ``uld_weight``.

Both pieces work in row tiles: neither builds a ``[tokens, vocab]`` tensor (the span piece recomputes each tile's
logits in backward through activation checkpointing).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from charlit.kernels.topk_teacher import fused_linear_topk_divergence

SPAN_TILE = 128
"""Rows per tile of the span piece (its ``[tile, V]`` fp32 logits are the largest tensor it holds)."""


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias, softcap) -> torch.Tensor:
    z = hidden.float() @ weight.float().T
    if bias is not None:
        z = z + bias.float()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z


@torch.no_grad()
def mapped_topk_teacher(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    vocab_map: torch.Tensor,
    student_vocab: int,
    k: int,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    tile: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's next-token distribution over the **student's** vocabulary, as top-k + tail rows.

    ``hidden [n, H]`` and ``weight [V_t, H]`` are the teacher's; ``vocab_map [V_t]`` gives each teacher id's student
    id (-1: none). The mass of every teacher id mapping to student id ``s`` is summed into ``s``. Returns ``ids
    [n, k]`` (student ids, most likely first), ``logprobs [n, k]`` and ``tail [n]`` = log of the mass outside the k
    (other student ids and unmapped teacher ids), all at temperature 1.
    """
    if not 1 <= k <= student_vocab:
        raise ValueError(f"k must be in [1, {student_vocab}] (the student's vocabulary), got {k}")
    n = hidden.shape[0]
    rows = vocab_map.shape[0]
    if weight.shape[0] < rows:
        raise ValueError(f"vocab_map has {rows} entries but the teacher's lm_head only {weight.shape[0]} rows")
    target = torch.where(vocab_map >= 0, vocab_map, student_vocab).to(hidden.device)  # unmapped -> bucket V_s
    ids = torch.empty(n, k, dtype=torch.long, device=hidden.device)
    logprobs = torch.empty(n, k, dtype=torch.float32, device=hidden.device)
    tail = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for i0 in range(0, n, tile):
        z = _logits(hidden[i0 : i0 + tile], weight[:rows], bias[:rows] if bias is not None else None, softcap)
        p = torch.softmax(z.double(), dim=-1)
        mass = torch.zeros(p.shape[0], student_vocab + 1, dtype=torch.float64, device=p.device)
        mass.index_add_(1, target, p)
        top, idx = mass[:, :student_vocab].topk(k, dim=-1)
        rest = mass.scatter(1, idx, 0.0).sum(-1)
        ids[i0 : i0 + tile] = idx
        logprobs[i0 : i0 + tile] = top.clamp_min(1e-300).log().float()
        tail[i0 : i0 + tile] = torch.where(rest > 0, rest.clamp_min(1e-300).log(), -torch.inf).float()
    return ids, logprobs, tail


def _span_tile(hidden, weight, bias, softcap, targets, first, k: int):
    logp = torch.log_softmax(_logits(hidden, weight, bias, softcap), dim=-1)
    realized = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    top = logp[first].topk(k, dim=-1).values
    return realized, top


def span_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    first: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the log-prob of its realised token ``targets [n]``, and at the rows flagged ``first [n]`` the top-k
    log-probs (descending). Differentiable in ``hidden``/``weight``/``bias`` when grad is enabled (tiles are
    checkpointed: their logits are recomputed in backward)."""
    realized, tops = [], []
    for i0 in range(0, hidden.shape[0], SPAN_TILE):
        args = (hidden[i0 : i0 + SPAN_TILE], weight, bias, softcap, targets[i0 : i0 + SPAN_TILE])
        f = first[i0 : i0 + SPAN_TILE]
        if torch.is_grad_enabled():
            r, t = checkpoint(_span_tile, *args, f, k, use_reentrant=False)
        else:
            r, t = _span_tile(*args, f, k)
        realized.append(r)
        tops.append(t)
    if not realized:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty.reshape(0, k)
    return torch.cat(realized), torch.cat(tops)


def merged_span_logprobs(realized: torch.Tensor, top: torch.Tensor, group: torch.Tensor, first: torch.Tensor):
    """``log m`` per group ``[G, k]``: the first row's top-k log-probs plus the realised log-probs of the group's
    other rows (``group [n]``: each row's group index, groups contiguous and in order)."""
    rest = torch.zeros(top.shape[0], dtype=realized.dtype, device=realized.device)
    rest = rest.index_add(0, group, torch.where(first, torch.zeros_like(realized), realized))
    return top + rest.unsqueeze(1)


def uld_distance(student_merged: torch.Tensor, teacher_merged: torch.Tensor) -> torch.Tensor:
    """``[G]``: L1 distance between the sorted (descending) merged probabilities of both sides."""
    return (student_merged.exp() - teacher_merged.exp()).abs().sum(-1)


def cross_tokenizer_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    exact_rows: torch.Tensor,
    exact_ids: torch.Tensor,
    exact_logprobs: torch.Tensor,
    exact_tail: torch.Tensor,
    span_rows: torch.Tensor,
    span_targets: torch.Tensor,
    span_group: torch.Tensor,
    span_first: torch.Tensor,
    span_teacher: torch.Tensor,
    span_weight: torch.Tensor,
    beta: float = 0.0,
    uld_weight: float = 1.0,
    num_items: float | None = None,
    student_bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss for one batch: ``(sum over exact rows of D_beta + uld_weight * sum over span groups of
    weight * ULD) / num_items`` (default: exact rows + span rows). Rows index ``student_hidden [N, H]``. Returns the
    loss and its two parts (each already divided by ``num_items``, detached)."""
    n_items = float(num_items) if num_items is not None else float(len(exact_rows) + len(span_rows))
    n_items = max(n_items, 1.0)
    exact = fused_linear_topk_divergence(
        student_hidden[exact_rows],
        student_weight,
        exact_ids,
        exact_logprobs,
        exact_tail,
        beta=beta,
        reduction="sum",
        student_bias=student_bias,
        softcap=softcap,
    )
    if len(span_rows):
        k = span_teacher.shape[1]
        realized, top = span_logprobs(
            student_hidden[span_rows], student_weight, span_targets, span_first, k, student_bias, softcap
        )
        merged = merged_span_logprobs(realized, top, span_group, span_first)
        span = (span_weight * uld_distance(merged, span_teacher)).sum()
    else:
        span = student_hidden.sum() * 0.0
    loss = (exact + uld_weight * span) / n_items
    return loss, {"exact": exact.detach() / n_items, "span": span.detach() / n_items}
