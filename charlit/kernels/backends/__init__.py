"""Kernel backends by name: one small module per backend (``torch``, ``triton``, ``cuda``), each registering an
object that meets :class:`KernelBackend` in :data:`KERNEL_BACKENDS`. Which one runs is decided in
:mod:`charlit.kernels.selection`; objectives never see it."""

from .base import KERNEL_BACKENDS, YES, Availability, KernelBackend

__all__ = ["KERNEL_BACKENDS", "YES", "Availability", "KernelBackend"]
