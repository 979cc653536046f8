"""Objectives by name. Built-ins register on import; third parties register through the
``charlit.objectives`` entry-point group (``name = "package.module:ObjectiveClass"``)."""
from __future__ import annotations

from importlib.metadata import entry_points

_REGISTRY: dict[str, type] = {}
_BUILTINS = ("charlit.objectives.sft", "charlit.objectives.self_distill", "charlit.objectives.dpo",
             "charlit.objectives.distill", "charlit.objectives.on_policy_distill")
ENTRY_POINT_GROUP = "charlit.objectives"


def register(name: str):
    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"Objective {name!r} is already registered by {_REGISTRY[name].__qualname__}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return decorator


def _load_all() -> None:
    import importlib

    for module in _BUILTINS:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_objective(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown method {name!r}; registered objectives: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]
