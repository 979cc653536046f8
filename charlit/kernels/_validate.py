"""Argument checking and position compaction shared by every backend.

The public ops accept hidden states with any leading shape (``[N, H]`` or ``[B, T, H]``);
everything below works on flattened rows.  Masked positions are removed here, *before* any
matmul, so backends only ever see rows that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; use float32, float16 or bfloat16")


def check_scalars(temperature: float, softcap: float | None, beta: float = 0.0) -> None:
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if softcap is not None and not float(softcap) > 0.0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")


def check_linear(prefix: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """hidden [..., H], weight [V, H], bias [V] or None."""
    _check_float(f"{prefix}hidden", hidden)
    _check_float(f"{prefix}weight", weight)
    if weight.dim() != 2:
        raise ValueError(
            f"{prefix}weight must be 2-D [vocab, hidden] (an lm_head weight), got shape {tuple(weight.shape)}"
        )
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{prefix}hidden has shape {tuple(hidden.shape)} but {prefix}weight has shape {tuple(weight.shape)}: "
            f"the last dim of {prefix}hidden must equal weight.shape[1]={weight.shape[1]}; pass the final hidden state "
            f"that feeds this lm_head (not logits, not an earlier layer)"
        )
    if bias is not None:
        _check_float(f"{prefix}bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{prefix}bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},) to match "
                f"{prefix}weight rows"
            )
    if hidden.device != weight.device:
        raise ValueError(
            f"{prefix}hidden is on {hidden.device} but {prefix}weight is on {weight.device}; move them to one device"
        )


def check_vocab(student_weight: torch.Tensor, teacher_weight: torch.Tensor) -> None:
    vs, vt = student_weight.shape[0], teacher_weight.shape[0]
    if vt < vs:
        raise ValueError(
            f"teacher vocabulary ({vt} rows, teacher_weight {tuple(teacher_weight.shape)}) is smaller than the "
            f"student's "
            f"({vs} rows, student_weight {tuple(student_weight.shape)}). Padding can only make the teacher larger; "
            f"logit-level distillation needs a shared tokenizer. If the student's extra rows are padding, slice "
            f"student_weight[:{vt}] yourself; otherwise use a teacher with the same vocabulary."
        )


def valid_rows(mask: torch.Tensor | None, lead_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """Turn ``mask`` into a flat bool tensor of counted positions (None = all count).

    ``mask`` may be a bool tensor (True = counts) or an integer tensor of labels, in which case
    positions equal to -100 (``ignore_index``) are ignored.  Its shape must equal the hidden
    states' leading shape (``[N]`` or ``[B, T]``).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the hidden states have leading shape {tuple(lead_shape)}; "
            f"they must match"
        )
    if mask.dtype == torch.bool:
        keep = mask
    elif not mask.dtype.is_floating_point and not mask.dtype.is_complex:
        keep = mask != IGNORE_INDEX
    else:
        raise ValueError(
            f"mask has dtype {mask.dtype}; pass a bool mask (True = counts) or integer labels with -100 = ignored"
        )
    return keep.reshape(-1).to(device)


def labels_valid(targets: torch.Tensor, lead_shape: torch.Size, vocab: int, ignore_index: int) -> torch.Tensor:
    """Flat bool tensor of positions whose target is not ``ignore_index``; checks target range."""
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must be an integer tensor of token ids (got {getattr(targets, 'dtype', type(targets))})"
        )
    if tuple(targets.shape) != tuple(lead_shape):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but hidden has leading shape {tuple(lead_shape)}; "
            f"they must match"
        )
    flat = targets.reshape(-1)
    keep = flat != ignore_index
    if flat.numel():
        kept = flat[keep]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
            raise ValueError(
                f"targets contain ids outside [0, {vocab}) (min {int(kept.min())}, max {int(kept.max())}); "
                f"use ignore_index={ignore_index} for positions that do not count"
            )
    return keep


@dataclass
class Compacted:
    """Rows that count, plus what is needed to put per-row results back."""

    index: torch.Tensor | None  # LongTensor of kept flat rows, None when every row counts
    n_total: int
    lead_shape: torch.Size

    @property
    def count(self) -> int:
        return self.n_total if self.index is None else int(self.index.numel())

    def take(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(self.n_total, *t.shape[len(self.lead_shape) :])
        return flat if self.index is None else flat.index_select(0, self.index)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-kept-row values -> leading shape, 0 where not counted (differentiable)."""
        if self.index is None:
            return rows.reshape(self.lead_shape)
        out = rows.new_zeros(self.n_total).index_copy(0, self.index, rows)
        return out.reshape(self.lead_shape)


def compact(keep: torch.Tensor | None, lead_shape: torch.Size) -> Compacted:
    n_total = 1
    for d in lead_shape:
        n_total *= int(d)
    if keep is None:
        return Compacted(None, n_total, lead_shape)
    index = keep.nonzero().view(-1)
    if index.numel() == n_total:
        index = None
    return Compacted(index, n_total, lead_shape)
