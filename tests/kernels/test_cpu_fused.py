"""Building and falling back from the fused CPU row kernels (``charlit.kernels.cpu_fused``)."""

from __future__ import annotations

import pytest
import torch

from charlit.kernels import cpu_fused, fused_linear_divergence

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
    assert len(first) == 1 and first[0].suffix == ".so"
    mtime = first[0].stat().st_mtime_ns
    cpu_fused._build()
    assert sorted(tmp_path.iterdir()) == first and first[0].stat().st_mtime_ns == mtime


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
