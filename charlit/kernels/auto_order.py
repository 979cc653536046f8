"""The measured part of ``backend="auto"``: per GPU class, the backends in the order a GPU check found fastest.

The table is ``auto_order.json`` beside this module, written only by ``benchmarks/gpu_check.py --install`` from
measured results (never by hand).  A GPU class (``cuda-sm90`` for H100/H200) with an entry tries its measured
order first, then the rest of :data:`charlit.kernels.selection.AUTO_ORDER`; a class without one, and every CPU,
uses ``AUTO_ORDER`` alone.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("auto_order.json")


def device_class(device: torch.device) -> str:
    """``cuda-sm<major><minor>`` for a CUDA device, else the device type."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda-sm{major}{minor}"


def measured_classes(path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """GPU class -> measured backend order, from the table at ``path`` (default :data:`TABLE_PATH`; empty when
    there is none).  Read again whenever the file changes."""
    path = Path(path or TABLE_PATH)
    if not path.exists():
        return {}
    stat = path.stat()
    return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _read(path: Path, mtime_ns: int, size: int) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, entry in json.loads(path.read_text()).get("classes", {}).items():
        order = entry.get("order") if isinstance(entry, dict) else None
        if not (isinstance(order, list) and order and all(isinstance(b, str) for b in order)):
            raise ValueError(
                f"{path}: classes[{name!r}].order must be a non-empty list of backend names, got {order!r}; "
                f"rewrite the entry with benchmarks/gpu_check.py --install RESULTS/auto_order.json"
            )
        out[name] = tuple(order)
    return out


def measured_order(device: torch.device) -> tuple[str, ...]:
    """The measured order for ``device``'s class, () when none was measured (always () on CPU)."""
    if device.type == "cpu":
        return ()
    classes = measured_classes()
    return classes.get(device_class(device), ()) if classes else ()


def scores(ratios: dict[str, list[float]]) -> dict[str, float]:
    """Geometric mean of each backend's time / GEMM-floor ratios (backends without any are left out)."""
    return {name: math.exp(sum(map(math.log, r)) / len(r)) for name, r in ratios.items() if r}


def rank(ratios: dict[str, list[float]]) -> list[str]:
    """Backend names by :func:`scores`, fastest first."""
    score = scores(ratios)
    return sorted(score, key=score.get)


def install(results_table: Path, path: Path | None = None) -> list[str]:
    """Merge the classes of a GPU check's ``auto_order.json`` into the table at ``path``; returns their names."""
    new = json.loads(Path(results_table).read_text())
    if new.get("dry_run"):
        raise ValueError(
            f"{results_table} comes from a --dry-run (CPU, interpreted Triton): its order measures nothing; "
            f"install the auto_order.json of a run on a GPU"
        )
    classes = new.get("classes") or {}
    bad = [name for name in classes if not name.startswith("cuda-")]
    if bad or not classes:
        raise ValueError(
            f"{results_table} holds no GPU class to install (classes: {sorted(classes)}); only cuda-* classes are "
            f"measured, the CPU order stays AUTO_ORDER['cpu']"
        )
    path = Path(path or TABLE_PATH)
    table = json.loads(path.read_text()) if path.exists() else {"classes": {}}
    table.setdefault("classes", {}).update(classes)
    path.write_text(json.dumps(table, indent=2) + "\n")
    return sorted(classes)
