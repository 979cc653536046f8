"""Fused per-row softmax passes for CPU tiles (``fused_rows.cpp``), built on first use.

The chunked backend's GEMMs run in torch; the elementwise work between them (log-softmax of
student and teacher, divergence, gradient) takes ~17 eager passes over each ``[B, V]`` tile,
which on this CPU cost half as much again as the GEMMs.  ``fused_rows.cpp`` does the same math
in one memory pass per row.  It is compiled with the system C++ compiler (``$CXX``, else
``g++``/``c++``) into ``$CHARLIT_KERNEL_CACHE`` (default ``~/.cache/charlit/kernels``), keyed by
the source, flags and CPU, and loaded with ctypes; no torch headers, so a build takes ~1-2 s.

The cache holds code this process runs, so it must be private: the directory is created with mode 0700, and a
directory or library owned by someone else or writable by group or others is refused with an
:class:`~charlit.paths.UnsafePathError` (a ``charlit: error`` line, not a silent fallback).  Each build writes
the library's SHA-256 beside it (``<library>.sha256``); a library whose digest is missing or differs is built
again, and the digest is checked once more right before ``ctypes`` loads it.

When no compiler is found or the build fails, ``available()`` is False (with one warning) and
the backend keeps its eager torch path.  ``CHARLIT_CPU_FUSED=0`` turns the fused path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

from charlit.paths import check_private, exclusive_lock, private_dir, sha256_file, write_private

SOURCE = Path(__file__).with_name("fused_rows.cpp")
FLAGS = ["-O3", "-std=c++20", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC", "-pthread"]
SETTING = "$CHARLIT_KERNEL_CACHE"
log = logging.getLogger(__name__)

enabled = os.environ.get("CHARLIT_CPU_FUSED", "1") != "0"
"""Use the fused kernel when it builds (tests flip this to cover the eager path too)."""
_lib = None
_failed = False


def _cpu_fingerprint() -> str:
    """Model and feature flags: the build uses -march=native, so a different CPU gets its own .so."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    return None


def _flags(cxx: str) -> list:
    probe = subprocess.run(
        [cxx, "-march=native", "-x", "c++", "-E", "-", "-o", os.devnull], input="", capture_output=True, text=True
    )
    return FLAGS + (["-march=native"] if probe.returncode == 0 else [])


def kernel_cache() -> Path:
    """The private directory of compiled kernels (``$CHARLIT_KERNEL_CACHE``, default ``~/.cache/charlit/kernels``)."""
    path = os.environ.get("CHARLIT_KERNEL_CACHE") or Path.home() / ".cache" / "charlit" / "kernels"
    return private_dir(path, SETTING)


def digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def verified(library: Path) -> bool:
    """Whether ``library`` matches its recorded digest (False when either is missing: build it again); an
    UnsafePathError when either is a file someone else could have written."""
    digest = digest_path(library)
    if not (library.exists() and digest.exists()):
        return False
    check_private(library, SETTING)
    check_private(digest, SETTING)
    return digest.read_text().strip() == sha256_file(library)


def _compile(cxx: str, flags: list, target: Path) -> None:
    """Build into a temporary file, record its digest, then rename it into place."""
    t0 = time.perf_counter()
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build {SOURCE.name}:\n{res.stderr[-2000:]}")
        os.chmod(tmp, 0o700)
        write_private(digest_path(target), sha256_file(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built fused CPU row kernels in %.1f s: %s", time.perf_counter() - t0, target)


def library_path(cxx: str, flags: list) -> Path:
    """Where the build of this source with this compiler, flags and CPU lives in the cache."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_fingerprint()]).encode())
    return kernel_cache() / f"fused_rows_{key.hexdigest()[:16]}.so"


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++)")
    flags = _flags(cxx)
    target = library_path(cxx, flags)
    with exclusive_lock(target.parent / ".lock"):  # concurrent ranks: one builds, the others verify its library
        if not verified(target):
            _compile(cxx, flags, target)
        if not verified(target):
            raise RuntimeError(f"{target} does not match its digest {digest_path(target)} right after the build")
        lib = ctypes.CDLL(str(target))
    f, i64, i32, dbl, fl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_float
    lib.charlit_divergence_rows.argtypes = [f, i64, f, i64, i64, i64, dbl, i32, f, fl, f, i32]
    lib.charlit_divergence_rows.restype = None
    lib.charlit_logprob_rows.argtypes = [f, i64, f, i64, i64, i32, f, fl, f, i32]
    lib.charlit_logprob_rows.restype = None
    return lib


def available() -> bool:
    """True when the fused kernel is enabled and built (builds it on the first call)."""
    global _lib, _failed
    if not enabled or _failed:
        return False
    if _lib is None:
        try:
            _lib = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _failed = True
            warnings.warn(
                f"charlit: fused CPU row kernels unavailable, using eager torch ops (slower): {err}", stacklevel=2
            )
            return False
    return True


def usable(*tiles: torch.Tensor) -> bool:
    """The fused path takes fp32 CPU tiles whose rows are contiguous."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(1) == 1 for t in tiles) and available()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def divergence_rows(
    s: torch.Tensor,
    t: torch.Tensor,
    beta: float,
    want_grad: bool,
    row_scale: torch.Tensor | None = None,
    grad_mul: float = 1.0,
) -> torch.Tensor:
    """Per-row divergence of scaled logits ``s`` (student) and ``t`` (teacher), both ``[r, V]`` fp32.

    With ``want_grad``, ``s`` is overwritten in place by ``grad_mul * row_scale * d loss / d s``.
    """
    rows, vocab = s.shape
    loss = torch.empty(rows, dtype=torch.float32)
    scale = None if row_scale is None else row_scale.float().contiguous()
    _lib.charlit_divergence_rows(
        _ptr(s),
        s.stride(0),
        _ptr(t),
        t.stride(0),
        rows,
        vocab,
        float(beta),
        int(want_grad),
        _ptr(scale),
        float(grad_mul),
        _ptr(loss),
        torch.get_num_threads(),
    )
    return loss


def logprob_rows(
    z: torch.Tensor, y: torch.Tensor, want_grad: bool, g: torch.Tensor | None = None, grad_mul: float = 1.0
) -> torch.Tensor:
    """``log_softmax(z)[y]`` per row of ``z`` ``[r, V]`` fp32; with ``want_grad`` ``z`` becomes
    ``grad_mul * g * (onehot(y) - softmax(z))`` in place (``g`` None: 1)."""
    rows, vocab = z.shape
    out = torch.empty(rows, dtype=torch.float32)
    yy = y.to(torch.int64).contiguous()
    gg = None if g is None else g.float().contiguous()
    _lib.charlit_logprob_rows(
        _ptr(z),
        z.stride(0),
        _ptr(yy),
        rows,
        vocab,
        int(want_grad),
        _ptr(gg),
        float(grad_mul),
        _ptr(out),
        torch.get_num_threads(),
    )
    return out
