"""Copies of tensors in another dtype, kept while the source tensor lives and is unmodified; CPU bf16 autocast.

Under bf16 autocast on the CPU the same frozen fp32 weights (a LoRA run's base weights, a frozen lm_head) would be
cast to bf16 again at every forward and every loss call. :class:`CastCache` keeps one copy per source tensor and
dtype, keyed by identity and checked against the tensor's ``_version`` (any in-place change makes a new copy); an
entry goes when its source tensor is freed.
"""

from __future__ import annotations

import weakref

import torch


class CastCache:
    def __init__(self):
        self._entries: dict[tuple[int, torch.dtype], tuple] = {}

    def get(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` in ``dtype`` (detached): the kept copy while ``tensor`` is unchanged, else a fresh one."""
        if tensor.dtype == dtype:
            return tensor
        key = (id(tensor), dtype)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
            return entry[2]
        with torch.inference_mode(False):  # a copy made during validation must still serve training's autograd
            cast = tensor.detach().to(dtype)
        entries = self._entries

        def forget(_, key=key) -> None:
            entries.pop(key, None)

        self._entries[key] = (weakref.ref(tensor, forget), tensor._version, cast)
        return cast

    def __len__(self) -> int:
        return len(self._entries)


def cpu_bf16_autocast() -> bool:
    """Whether CPU autocast is on at bf16 (Lightning's ``trainer.precision=bf16-mixed`` on a CPU)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
