"""What processor a measurement ran on, for benchmark results: speed-ups on CPU differ between processors (AVX2 vs
AVX-512 and AMX-bf16), so every timing is recorded beside the model name and the vector/matrix features that decide
which fast path wins."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the /proc/cpuinfo flags that change which CPU path is fastest (fp32 SIMD width, native bf16, AMX tiles)
FAST_PATH_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_summary(cpuinfo: str | None = None) -> dict:
    """``{"model", "cpuid", "cores", "flags"}``: the CPU model name, its family/model/stepping (``25.1.1``; virtual
    machines often report a bare "AMD EPYC" for processors of different generations), the cores this process may
    use, and which of :data:`FAST_PATH_FLAGS` the CPU has; ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when
    None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    present = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "cpuid": ".".join(fields[k] for k in ("cpu family", "model", "stepping") if fields.get(k)),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": [f for f in FAST_PATH_FLAGS if f in present],
    }


def native_bf16(summary: dict | None = None) -> bool:
    """Whether the CPU computes bf16 products natively (AMX tiles or AVX512-BF16), where bf16 can beat fp32."""
    flags = (summary or cpu_summary())["flags"]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def describe_cpu(summary: dict | None = None) -> str:
    """One line for a results file: ``AMD EPYC (cpuid 25.1.1), 2 cores, avx2 fma``."""
    s = summary or cpu_summary()
    cpuid = f" (cpuid {s['cpuid']})" if s.get("cpuid") else ""
    return f"{s['model']}{cpuid}, {s['cores']} cores, {' '.join(s['flags']) or 'no AVX2/AVX-512/AMX'}"
