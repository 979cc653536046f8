"""The frozen starting policy, used as the ``frozen`` teacher, the likelihood judge and (later) the DPO reference.

With LoRA it is the policy itself with the adapter disabled (no second copy in memory); with full
fine-tuning it is a frozen deep copy taken before training starts.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from charlit.models.modes import eval_mode


class FrozenReference:
    def __init__(self, policy: torch.nn.Module):
        self._policy = policy
        if hasattr(policy, "disable_adapter"):
            self._copy = None
        else:
            self._copy = copy.deepcopy(policy).eval()
            self._copy.requires_grad_(False)

    @property
    def shares_weights(self) -> bool:
        return self._copy is None

    @contextmanager
    def model(self):
        """Yield a module computing the frozen base model's outputs (use under ``torch.no_grad``)."""
        if self._copy is not None:
            yield self._copy
            return
        with eval_mode(self._policy), self._policy.disable_adapter():
            yield self._policy

    def to(self, device):
        if self._copy is not None:
            self._copy.to(device)
        return self
