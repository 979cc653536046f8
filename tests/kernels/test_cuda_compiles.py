"""The CUDA C++ sources must keep compiling (compile-only here; nothing CUDA runs on CPU CI).

Runs ``nvcc -c`` on the sources the ``cuda`` backend loads (``charlit/kernels/csrc``, package data) against
the installed torch headers for sm_80.
A CPU-only torch wheel omits the build-generated ``c10/cuda/impl/cuda_cmake_macros.h``;
when missing, the test writes that one-line header into a temporary include directory (a
CUDA build of torch ships it).  ~30-60 s on 2 cores.  On a CUDA machine the op is also
built with cpp_extension and checked against the reference.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from charlit.kernels import cuda_ext

SOURCES = cuda_ext.SOURCES


def test_sources_ship_as_package_data():
    """The backend loads its sources from the installed package, so pyproject must ship every one."""
    import tomllib

    assert SOURCES and not cuda_ext.sources_problem()
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["charlit"]
    package = Path(cuda_ext.__file__).resolve().parents[1]
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(SOURCES) <= shipped, f"add charlit/kernels/csrc sources to [tool.setuptools.package-data]: {patterns}"


@pytest.mark.slow  # ~60 s per CUDA source on 2 cores: make test-slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(src, tmp_path):
    from torch.utils.cpp_extension import include_paths

    incs = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    macros = Path(include_paths()[0]) / "c10/cuda/impl/cuda_cmake_macros.h"
    if not macros.exists():
        shim = tmp_path / "shim/c10/cuda/impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        incs.append(f"-I{tmp_path / 'shim'}")
    cmd = [
        "nvcc",
        "-c",
        str(src),
        "-o",
        str(tmp_path / "out.o"),
        "-std=c++17",
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-diag-suppress",
        "3306",
        "-Xcompiler",
        "-Wall",
        *incs,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_reference():
    from .helpers import make_div_inputs, rel_err, run_div, run_logprobs

    inputs = {
        k: v.detach().cuda().requires_grad_(v.requires_grad)
        for k, v in make_div_inputs(37, 31, 1003, bias=True).items()
    }
    for beta in (0.0, 0.3, 1.0):
        for red in ("mean", "none"):
            loss, g, _ = run_div(inputs, backend="cuda", beta=beta, reduction=red, softcap=5.0)
            ref, rg, _ = run_div(inputs, backend="reference", beta=beta, reduction=red, softcap=5.0)
            assert rel_err(loss, ref) <= 1e-4
            for k in rg:
                assert rel_err(g[k], rg[k]) <= 1e-4, (beta, red, k)
    x, w = torch.randn(37, 31, device="cuda"), torch.randn(300, 31, device="cuda") / 5
    y = torch.randint(0, 300, (37,), device="cuda")
    out, g = run_logprobs(x, w, y, backend="cuda")
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert rel_err(out, ref) <= 1e-4 and rel_err(g["weight"], rg["weight"]) <= 1e-4
