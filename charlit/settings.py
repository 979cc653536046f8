"""Typed settings: each plugin declares its settings once, as a dataclass, and they are checked here.

A field's default is the one default in code (config YAMLs list the same values for users to read; a test keeps
them equal), and its metadata says what values are allowed::

    @dataclass
    class SelfDistillConfig:
        beta: float = setting(1.0, ge=0, le=1, help="0 forward KL, 1 reverse KL")
        teacher_weights: str = setting("frozen", choices=("frozen", "live", "ema"))

:func:`parse` turns a config node (a ``DictConfig`` or a dict) into that dataclass: unknown keys, wrong types and
values out of range raise one ``ValueError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

C = TypeVar("C")
MISSING = dataclasses.MISSING


def setting(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with its allowed range (``ge``/``gt``/``le``/``lt``) or ``choices``."""
    meta = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": tuple(choices) if choices is not None else None,
        "help": help,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _plain(node) -> dict:
    if node is None:
        return {}
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def _coerce(key: str, value, annotation):
    """``value`` as ``annotation`` (bool / int / float / str, optional, lists and dicts pass through)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0]) if len(inner) == 1 else value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}={value!r} must be true or false.")
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ValueError(f"{key}={value!r} must be an integer.")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}={value!r} must be a number.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}={value!r} must be a string.")
        return value
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}={value!r} must be a list.")
        return list(value)
    return value


def _check_range(key: str, value, meta: dict) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}.")
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{key}=nan is not a number.")
    bounds = [
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    ]
    failed = [(sym, meta[name]) for name, sym, ok in bounds if meta.get(name) is not None and not ok(value, meta[name])]
    if failed:
        allowed = " and ".join(
            f"{sym} {bound:g}" for sym, bound in [(sym, meta[n]) for n, sym, _ in bounds if meta.get(n) is not None]
        )
        raise ValueError(f"{key}={value:g} is out of range; it must be {allowed}.")


def parse(cls: type[C], node, prefix: str, ignore: Sequence[str] = ("name",)) -> C:
    """Build settings dataclass ``cls`` from ``node`` (keys under ``prefix``, e.g. ``method``), checked."""
    values = _plain(node)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(k for k in values if k not in fields and k not in ignore)
    if unknown:
        raise ValueError(
            f"{prefix}.{unknown[0]} is not a setting of {prefix}={values.get('name', cls.__name__)}; "
            f"valid settings: {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        value = values.get(name, "???")
        if value == "???":
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            what = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
            raise ValueError(f"{key} is required{what}; set {key}=<value>.")
        value = _coerce(key, value, hints[name])
        _check_range(key, value, f.metadata)
        kwargs[name] = value
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    if callable(check):
        check(prefix)
    return instance


def check(settings, prefix: str):
    """Re-check an already built settings object (e.g. one made by hand in a test); returns it."""
    for f in dataclasses.fields(settings):
        _check_range(f"{prefix}.{f.name}", getattr(settings, f.name), f.metadata)
    extra = getattr(settings, "check", None)
    if callable(extra):
        extra(prefix)
    return settings


def defaults(cls) -> dict:
    """Every field's default (for the YAML-parity test and docs)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
