"""Debug hook: what tiling the kernels chose, for tests that forbid ``[N, V]`` buffers or check a code path.

Backends call :func:`record_plan`; it costs nothing unless a :func:`record_plans` block is open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """One kernel call: ``op`` ("divergence" / "logprobs"), the backend that ran it, compacted ``rows``,
    ``vocab``, rows per token tile, and whether gradients were computed in the forward pass."""

    op: str
    backend: str
    rows: int
    vocab: int
    token_tile: int
    grad_in_forward: bool


_recorders: list[list[Plan]] = []


@contextmanager
def record_plans() -> Iterator[list[Plan]]:
    """``with record_plans() as plans:`` — ``plans`` receives every :class:`Plan` recorded inside the block."""
    plans: list[Plan] = []
    _recorders.append(plans)
    try:
        yield plans
    finally:
        _recorders[:] = [r for r in _recorders if r is not plans]


def record_plan(plan: Plan) -> None:
    for plans in _recorders:
        plans.append(plan)
