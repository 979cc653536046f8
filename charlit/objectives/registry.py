"""Objectives by name (the ``method`` config group): every module of :mod:`charlit.objectives` may register one
with ``@OBJECTIVES.register("name")``; third parties use the ``charlit.objectives`` entry-point group."""

from __future__ import annotations

from charlit.registry import Registry

OBJECTIVES = Registry("objective", package="charlit.objectives", group="charlit.objectives", option="method")
