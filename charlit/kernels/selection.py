"""Which kernel backend runs: the ``backend=`` argument of the ops, else ``$CHARLIT_KERNEL_BACKEND``, else the
default set from config with :func:`set_default_backend`, else ``"auto"``.

``"auto"`` takes the first backend available here of: the order measured for the GPU's class
(:mod:`charlit.kernels.auto_order`, written by ``benchmarks/gpu_check.py``), then :data:`AUTO_ORDER` for the
tensors' device type (alone on CPU, and on GPU classes nothing was measured for); a named backend must be
available or the call fails saying why. ``"reference"`` (float64, materialised logits) is
a test/debug path handled by the public ops themselves, not a registered backend.
"""

from __future__ import annotations

import os

import torch

from .auto_order import measured_order
from .backends import KERNEL_BACKENDS, KernelBackend

BACKEND_ENV_VAR = "CHARLIT_KERNEL_BACKEND"
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("triton", "cuda", "torch"), "cpu": ("torch",)}
"""Preference per device type for ``"auto"`` where no order was measured; device types not listed use the
``"cpu"`` order."""
SPECIAL = ("auto", "reference")
_configured = "auto"


def backend_names() -> list[str]:
    """Every valid backend name: ``auto``, ``reference`` and the registered backends."""
    return [*SPECIAL, *KERNEL_BACKENDS.names()]


def _check(name, source: str) -> str:
    if isinstance(name, str) and (name in SPECIAL or name in KERNEL_BACKENDS):
        return name
    raise ValueError(
        f"{source}={name!r} is not a kernel backend; valid backends: "
        f"{', '.join(map(repr, backend_names()))} (third-party backends register through the "
        f"{KERNEL_BACKENDS.group!r} entry-point group)"
    )


def set_default_backend(name: str | None) -> None:
    """The backend the ops use when called without ``backend=`` (the config's choice; None or "auto": automatic).
    ``$CHARLIT_KERNEL_BACKEND`` still takes precedence."""
    global _configured
    _configured = _check("auto" if name is None else name, "set_default_backend(name)")


def requested(backend: str | None) -> tuple[str, str]:
    """(validated name, where it came from) for an op called with ``backend`` (None: the default)."""
    if backend is not None:
        return _check(backend, "backend"), "backend="
    env = os.environ.get(BACKEND_ENV_VAR, "").strip()
    if env:
        return _check(env, BACKEND_ENV_VAR), f"${BACKEND_ENV_VAR}"
    return _configured, "set_default_backend()"


def default_backend() -> str:
    """The backend name the ops use without ``backend=``: ``$CHARLIT_KERNEL_BACKEND`` or the configured default."""
    return requested(None)[0]


def auto_candidates(device: torch.device) -> tuple[str, ...]:
    """The candidates of ``"auto"`` on ``device``, in order: measured first, then the declared fallback."""
    declared = AUTO_ORDER.get(device.type, AUTO_ORDER["cpu"])
    measured = measured_order(device)
    return (*measured, *(name for name in declared if name not in measured))


def resolve(name: str, device: torch.device, source: str = "backend=") -> KernelBackend:
    """The backend object for a validated ``name`` (not "reference") on ``device``; ``source`` is for messages."""
    if name == "auto":
        reasons = []
        for candidate in auto_candidates(device):
            impl = KERNEL_BACKENDS.get(candidate)()
            ok = impl.available(device)
            if ok:
                return impl
            reasons.append(f"{candidate}: {ok.reason}")
        raise RuntimeError(f"no kernel backend runs on {device}: {'; '.join(reasons)}")
    impl = KERNEL_BACKENDS.get(name)()
    ok = impl.available(device)
    if not ok:
        raise RuntimeError(
            f"kernel backend {name!r} (chosen by {source}) cannot run on {device}: {ok.reason}. "
            f"Choose another through {source}, or 'auto' for the first of {auto_candidates(device)} that runs here."
        )
    return impl
