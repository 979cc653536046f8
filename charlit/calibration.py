"""Pick a CPU fast path by timing it on the machine it runs on, once per processor, thread count and shapes.

A fast path that wins on one processor can lose or tie on another (oneDNN's fp32 products are about 2x torch's
default on the AMD EPYC machines this project met first, and equal on an Intel Sapphire Rapids), so a choice is
never assumed: :func:`calibrated_choice` times each candidate a few times, alternating between them (median),
keeps the default unless another is faster by more than ``margin``, and caches the answer in
``$CHARLIT_CACHE/calibration.json`` keyed by the CPU model and cpuid (family, model, stepping: virtual machines
may report one name for several processor generations), its fast-path flags, the threads, torch's version and the
caller's shapes. The cache is advisory:
an unreadable or foreign entry is measured again, and a cache that cannot be written only costs a re-measure.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from charlit.machine import cpu_summary

CACHE_NAME = "calibration.json"


def cache_path() -> Path:
    """``$CHARLIT_CALIBRATION`` when set (a file of its own, e.g. per cluster node or a scratch one that forces
    re-measuring), else ``$CHARLIT_CACHE/calibration.json``."""
    if os.environ.get("CHARLIT_CALIBRATION"):
        return Path(os.environ["CHARLIT_CALIBRATION"]).expanduser()
    from charlit.models.bundled import cache_root

    return cache_root() / CACHE_NAME


def machine_key() -> dict:
    cpu = cpu_summary()
    return {
        "cpu": cpu["model"],
        "cpuid": cpu["cpuid"],
        "flags": cpu["flags"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _key(name: str, shapes) -> str:
    return json.dumps({"name": name, "shapes": shapes, **machine_key()}, sort_keys=True)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict) -> None:
    from charlit.data.pipeline.store import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache: the next run measures again


def time_candidates(candidates: dict[str, Callable[[], None]], repeats: int = 5) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` calls, after one warm-up call each. The calls alternate
    between candidates (A B A B …), so load from other processes that comes or goes during the measurement falls on
    every candidate alike instead of deciding the choice."""
    for run in candidates.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def calibrated_choice(
    name: str,
    shapes,
    candidates: dict[str, Callable[[], None]],
    default: str,
    margin: float = 0.05,
    repeats: int = 5,
    path: Path | None = None,
) -> tuple[str, dict]:
    """``(choice, record)``: the cached choice for ``name`` at ``shapes`` on this machine, else the candidate that
    runs fastest (the ``default`` unless another beats it by more than ``margin``), timed now and cached.
    ``record`` holds the seconds per candidate, the choice and whether it came from the cache."""
    if default not in candidates:
        raise ValueError(f"calibrated_choice({name!r}): the default {default!r} is not among {sorted(candidates)}.")
    path = path or cache_path()
    key = _key(name, shapes)
    cached = _read(path).get(key)
    if isinstance(cached, dict) and cached.get("choice") in candidates:
        return cached["choice"], {**cached, "cached": True}
    seconds = time_candidates(candidates, repeats)
    best = min(seconds, key=seconds.get)
    choice = best if seconds[best] < seconds[default] * (1 - margin) else default
    record = {"choice": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    data = _read(path)
    data[key] = record
    _write(path, data)
    return choice, {**record, "cached": False}
