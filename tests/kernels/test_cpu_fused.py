"""Building and falling back from the fused CPU row kernels (``charlit.kernels.cpu_fused``)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest
import torch

from charlit.kernels import cpu_fused, cuda_ext, fused_linear_divergence
from charlit.paths import UnsafePathError, sha256_file

from .helpers import make_div_inputs, rel_err


def test_without_compiler_warns_once_and_uses_eager_ops(monkeypatch):
    monkeypatch.setattr(cpu_fused, "_lib", None)
    monkeypatch.setattr(cpu_fused, "_failed", False)
    monkeypatch.setattr(cpu_fused, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert not cpu_fused.available()
    assert not cpu_fused.available()  # no second build attempt
    inputs = make_div_inputs(9, 8, 101)
    got = fused_linear_divergence(**inputs, backend="torch")
    assert rel_err(got, fused_linear_divergence(**inputs, backend="reference")) <= 1e-5


def test_build_is_cached_per_source_and_cpu(monkeypatch, tmp_path):
    if cpu_fused._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("CHARLIT_KERNEL_CACHE", str(tmp_path))
    cpu_fused._build()
    first = sorted(tmp_path.iterdir())
    assert [p.name.split(".", 1)[-1] for p in first] == ["lock", "so", "so.sha256"]
    library = first[1]
    assert (tmp_path / f"{library.name}.sha256").read_text() == sha256_file(library)
    mtime = library.stat().st_mtime_ns
    cpu_fused._build()
    assert sorted(tmp_path.iterdir()) == first and library.stat().st_mtime_ns == mtime


def test_row_kernel_matches_float64_softmax_math():
    """Direct check of the C++ rows against float64 torch (forward KL, value and gradient)."""
    if not cpu_fused.available():
        pytest.skip("fused CPU row kernels did not build here")
    s64, t64 = torch.randn(5, 777, dtype=torch.float64) * 3, torch.randn(5, 777, dtype=torch.float64) * 3
    s = s64.clone().requires_grad_()
    p = t64.softmax(1)
    ref = (p * (t64.log_softmax(1) - s.log_softmax(1))).sum(1)
    scale = torch.rand(5, dtype=torch.float64)
    (ref * scale).sum().backward()
    sf = s64.float()
    loss = cpu_fused.divergence_rows(sf, t64.float(), 0.0, True, scale.float(), 1.0)
    assert rel_err(loss, ref.detach()) <= 1e-6
    assert rel_err(sf, s.grad) <= 1e-6


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) fclose(f);
}
"""


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory):
    """A shared library whose constructor creates a marker file: it shows whether anything loaded it."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build a planted library")
    work = tmp_path_factory.mktemp("planted")
    marker = work / "LOADED"
    (work / "planted.c").write_text(PLANTED)
    library = work / "planted.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(work / "planted.c"), "-o", str(library)], check=True
    )
    ctypes.CDLL(shutil.copy(library, work / "probe.so"))
    assert marker.exists()  # the detector works: loading it leaves the marker
    marker.unlink()
    return library, marker


@pytest.fixture
def fake_compiler(monkeypatch, tmp_path):
    """A kernel cache in ``tmp_path`` and a compiler that must not be needed (a real one is not run)."""
    cache = tmp_path / "kernels"
    monkeypatch.setenv("CHARLIT_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(cpu_fused, "_compiler", lambda: "c++")
    monkeypatch.setattr(cpu_fused, "_flags", lambda cxx: list(cpu_fused.FLAGS))
    monkeypatch.setattr(cpu_fused, "_compile", lambda *a: pytest.fail("rebuilt instead of refusing"))
    return cache


def _plant(planted_library, target, mode=0o600, digest=None):
    library, _ = planted_library
    shutil.copy(library, target)
    target.chmod(mode)
    (target.parent / f"{target.name}.sha256").write_text(digest or sha256_file(target))
    (target.parent / f"{target.name}.sha256").chmod(0o600)


def test_cache_dir_is_created_private(fake_compiler):
    cpu_fused.kernel_cache()
    assert (fake_compiler.stat().st_mode & 0o777) == 0o700


def test_planted_world_writable_library_is_refused_not_loaded(fake_compiler, planted_library):
    target = cpu_fused.library_path("c++", cpu_fused.FLAGS)
    _plant(planted_library, target, mode=0o777)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        cpu_fused._build()
    assert not planted_library[1].exists()


def test_library_owned_by_someone_else_is_refused_not_loaded(fake_compiler, planted_library):
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    target = cpu_fused.library_path("c++", cpu_fused.FLAGS)
    _plant(planted_library, target)
    os.chown(target, 65534, 65534)
    with pytest.raises(UnsafePathError, match="owned by uid 65534, not by you"):
        cpu_fused._build()
    assert not planted_library[1].exists()


def test_shared_cache_dir_is_refused_before_anything_is_loaded(fake_compiler, planted_library):
    target = cpu_fused.library_path("c++", cpu_fused.FLAGS)
    _plant(planted_library, target)
    fake_compiler.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by group or others.*chmod go-w"):
        cpu_fused._build()
    assert not planted_library[1].exists()


def test_library_not_matching_its_digest_is_rebuilt_not_loaded(fake_compiler, planted_library, monkeypatch):
    target = cpu_fused.library_path("c++", cpu_fused.FLAGS)
    _plant(planted_library, target, digest="0" * 64)
    rebuilt = []
    monkeypatch.setattr(cpu_fused, "_compile", lambda cxx, flags, path: rebuilt.append(path))
    with pytest.raises(RuntimeError, match="does not match its digest"):  # the fake rebuild left the planted file
        cpu_fused._build()
    assert rebuilt == [target] and not planted_library[1].exists()


def test_cuda_extension_cache_gets_the_same_checks(tmp_path, monkeypatch, planted_library):
    from torch.utils import cpp_extension

    monkeypatch.setenv("CHARLIT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_ext, "_loaded", False)
    library = cuda_ext.build_dir() / f"{cuda_ext.NAME}.so"
    seen = []

    def fake_load(**kwargs):
        seen.append(library.exists())
        shutil.copy(planted_library[0], library)  # stands in for torch's build
        return str(library)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    _plant(planted_library, library, mode=0o666)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        cuda_ext.load()
    assert seen == []
    _plant(planted_library, library, digest="0" * 64)
    cuda_ext.load()
    assert seen == [False]  # the unverified library was removed before torch could load it
    assert (library.parent / f"{library.name}.sha256").read_text() == sha256_file(library)
