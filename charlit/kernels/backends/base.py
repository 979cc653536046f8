"""The contract every kernel backend meets, and the name table they register in.

A backend computes the fused losses over *compacted* rows (masked positions already removed by the public ops,
teacher tensors already detached and sliced to the student's vocabulary), so it never sees masks, reductions or
leading shapes. Register a class (or a zero-argument factory) with ``@KERNEL_BACKENDS.register("name")``;
third parties use the ``charlit.kernel_backends`` entry-point group. Import heavy dependencies inside the methods,
never at module level: every module of :mod:`charlit.kernels.backends` is imported when a name is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from charlit.registry import Registry

KERNEL_BACKENDS = Registry(
    "kernel backend", package="charlit.kernels.backends", group="charlit.kernel_backends", option="backend"
)


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on a device; truthy when it can, else ``reason`` says why and what to do."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Availability(True)


@runtime_checkable
class KernelBackend(Protocol):
    """Fused linear + divergence / log-probs over compacted rows; results are fp32 and differentiable."""

    name: str

    def available(self, device: torch.device) -> Availability:
        """Can this backend run on tensors of ``device`` here (packages, hardware, environment)?"""

    def divergence(
        self,
        xs: torch.Tensor,
        ws: torch.Tensor,
        bs: torch.Tensor | None,
        xt: torch.Tensor,
        wt: torch.Tensor,
        bt: torch.Tensor | None,
        beta: float,
        temperature: float,
        softcap: float | None,
        per_row: bool,
    ) -> torch.Tensor:
        """Sum over rows (``per_row``: the ``[n]`` values) of the generalized JSD of student ``xs @ ws.T + bs``
        vs teacher ``xt @ wt.T + bt`` logits, soft-capped then divided by ``temperature``; grads to xs, ws, bs."""

    def logprobs(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        y: torch.Tensor,
        temperature: float,
        softcap: float | None,
    ) -> torch.Tensor:
        """Per-row ``z_y - logsumexp(z)`` (``[n]``) of the soft-capped, temperature-scaled logits; every ``y`` valid."""
