"""Public fused ops: validation, compaction of ignored positions, reduction, backend selection."""

from __future__ import annotations

import torch

from . import float64_reference
from ._validate import (
    REDUCTIONS,
    check_linear,
    check_scalars,
    check_vocab,
    compact,
    labels_valid,
    valid_rows,
)
from .selection import requested, resolve


def _zero_with_graph(*tensors: torch.Tensor | None) -> torch.Tensor:
    """An fp32 scalar 0 connected to ``tensors`` so backward yields exact zero gradients."""
    out = torch.zeros((), dtype=torch.float32, device=tensors[0].device)
    for t in tensors:
        if t is not None and t.requires_grad:
            out = out + t.reshape(-1)[:0].sum().float()
    return out


def fused_linear_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: str = "mean",
    num_items: int | float | torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Divergence between teacher and student next-token distributions, from hidden states.

    Logits are ``hidden @ weight.T (+ bias)``, soft-capped (``softcap * tanh(z / softcap)``)
    if ``softcap`` is set, then divided by ``temperature``; ``q`` = softmax(student),
    ``p`` = softmax(teacher).  Convention of TRL's ``generalized_jsd_loss`` and Liger's
    ``LigerFusedLinearJSDLoss``: ``beta=0`` -> KL(p||q) (forward), ``beta=1`` -> KL(q||p)
    (reverse), otherwise ``beta*KL(p||m) + (1-beta)*KL(q||m)`` with ``m = beta*p + (1-beta)*q``.

    Shapes: hidden states ``[..., H]`` (same leading shape for student and teacher), weights
    ``[V, H]``.  ``teacher_weight`` may have more rows than ``student_weight`` (padded
    vocabulary); the extra rows are ignored.  The teacher never receives gradients.

    ``mask``: bool with the leading shape (True = position counts), or integer labels where
    -100 means ignored (the usual ``labels`` tensor, already shifted).  ``reduction``:
    ``"mean"`` over counted positions (or divided by ``num_items``, e.g. the global-batch token
    count, clamped to >= 1), ``"sum"``, or ``"none"`` (leading shape, 0 where not counted).
    ``scale_by_t2`` multiplies by ``temperature**2``.  ``backend``: a name from ``backend_names()``; None uses
    ``default_backend()``.  Returns fp32.
    """
    name, source = requested(backend)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_items is not None and reduction != "mean":
        raise ValueError(
            f"num_items only applies to reduction='mean' (got reduction={reduction!r}); drop num_items or use 'mean'"
        )
    check_scalars(temperature, softcap, beta)
    check_linear("student_", student_hidden, student_weight, student_bias)
    check_linear("teacher_", teacher_hidden, teacher_weight, teacher_bias)
    check_vocab(student_weight, teacher_weight)
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden {tuple(teacher_hidden.shape)} must have "
            f"the same leading (token) shape; align teacher positions to the student's first"
        )
    if teacher_hidden.device != student_hidden.device:
        raise ValueError(
            f"teacher tensors are on {teacher_hidden.device}, student on {student_hidden.device}; use one device"
        )
    keep = valid_rows(mask, lead, student_hidden.device)
    if teacher_bias is not None:
        teacher_bias = teacher_bias.detach()
    if name == "reference":
        return float64_reference.fused_linear_divergence(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            keep,
            beta,
            temperature,
            scale_by_t2,
            reduction,
            num_items,
            student_bias,
            teacher_bias,
            softcap,
        )

    vs = student_weight.shape[0]
    wt = teacher_weight.detach()[:vs]
    bt = None if teacher_bias is None else teacher_bias[:vs]
    rows = compact(keep, lead)
    n = rows.count
    if n == 0:
        zero = _zero_with_graph(student_hidden, student_weight, student_bias)
        return zero + torch.zeros(lead, dtype=torch.float32, device=zero.device) if reduction == "none" else zero

    impl = resolve(name, student_hidden.device, source)
    xs = rows.take(student_hidden)
    xt = rows.take(teacher_hidden.detach())
    out = impl.divergence(xs, student_weight, student_bias, xt, wt, bt, beta, temperature, softcap, reduction == "none")
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


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = -100,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-position ``z_y - logsumexp(z)`` of the (soft-capped, temperature-scaled) logits.

    ``hidden [..., H]``, ``weight [V, H]``, ``targets`` int with the leading shape.  Returns
    fp32 with the leading shape, 0 where ``targets == ignore_index``; differentiable w.r.t.
    ``hidden``, ``weight`` and ``bias``.  Sum it for sequence log-probs (DPO), negate and
    average for cross-entropy.  ``backend`` as for :func:`fused_linear_divergence`.
    """
    name, source = requested(backend)
    check_scalars(temperature, softcap)
    check_linear("", hidden, weight, bias)
    lead = hidden.shape[:-1]
    keep = labels_valid(targets, lead, weight.shape[0], ignore_index)
    if name == "reference":
        return float64_reference.fused_linear_logprobs(
            hidden, weight, targets, temperature, ignore_index, bias, softcap
        )
    rows = compact(keep.to(hidden.device), lead)
    if rows.count == 0:
        zero = _zero_with_graph(hidden, weight, bias)
        return zero + torch.zeros(lead, dtype=torch.float32, device=zero.device)
    impl = resolve(name, hidden.device, source)
    y = rows.take(targets.to(hidden.device)).long()
    out = impl.logprobs(rows.take(hidden), weight, bias, y, temperature, softcap)
    return rows.scatter(out)
