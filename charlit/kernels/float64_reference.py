"""Float64, fully materialised reference implementations (``backend="reference"``: tests and debugging).

These build the whole ``[N, V]`` logit matrix on purpose: they are the ground truth the
tiled backends are checked against, written as plainly as possible and differentiated by
autograd.  Masking is applied by zeroing per-position losses (not by compaction) so that the
public ops' compaction is itself under test.
"""

from __future__ import annotations

import math

import torch


def _logits(hidden, weight, bias, softcap, temperature):
    z = hidden.double() @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z / temperature


def divergence_per_position(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD in the TRL ``generalized_jsd_loss`` / Liger convention, per row.

    beta=0: KL(p||q); beta=1: KL(q||p); otherwise beta*KL(p||m) + (1-beta)*KL(q||m) with
    m = beta*p + (1-beta)*q, where q = softmax(student), p = softmax(teacher).
    """
    log_q = torch.log_softmax(student_logits, dim=-1)
    log_p = torch.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if beta == 1:
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    return beta * kl_p + (1 - beta) * kl_q


def fused_linear_divergence(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    keep: torch.Tensor | None,
    beta,
    temperature,
    scale_by_t2,
    reduction,
    num_items,
    student_bias,
    teacher_bias,
    softcap,
):
    """``keep``: flat bool of counted rows or None.  Returns float64."""
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    vs = student_weight.shape[0]
    tw = teacher_weight.detach()[:vs]
    tb = None if teacher_bias is None else teacher_bias.detach()[:vs]
    s = _logits(hs, student_weight, student_bias, softcap, temperature)
    t = _logits(ht, tw, tb, softcap, temperature)
    per = divergence_per_position(s, t, beta)
    if scale_by_t2:
        per = per * temperature**2
    if keep is None:
        keep = torch.ones(per.shape[0], dtype=torch.bool, device=per.device)
    per = torch.where(keep, per, torch.zeros_like(per))
    if reduction == "none":
        return per.reshape(student_hidden.shape[:-1])
    total = per.sum()
    if reduction == "sum":
        return total
    denom = num_items if num_items is not None else keep.sum().clamp_min(1)
    return total / torch.as_tensor(denom, dtype=torch.float64, device=total.device)


def fused_linear_logprobs(hidden, weight, targets, temperature, ignore_index, bias, softcap):
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    z = _logits(h, weight, bias, softcap, temperature)
    logp = torch.log_softmax(z, dim=-1)
    keep = y != ignore_index
    picked = logp.gather(1, torch.where(keep, y, torch.zeros_like(y)).unsqueeze(1)).squeeze(1)
    return torch.where(keep, picked, torch.zeros_like(picked)).reshape(targets.shape)
