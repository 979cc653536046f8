"""Triton backend vs the float64 reference (interpreter on CPU: small shapes only)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from .helpers import make_div_inputs, rel_err, run_div, run_logprobs, to_device

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="triton needs CUDA or TRITON_INTERPRET=1",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4


def _compare(inputs, upstream=None, tol=TOL, **kw):
    inputs = to_device(inputs, DEV)
    up = None if upstream is None else upstream.to(DEV)
    loss, grads, _ = run_div(inputs, upstream=up, backend="triton", **kw)
    ref, rgrads, _ = run_div(inputs, upstream=up, backend="reference", **kw)
    assert torch.isfinite(loss).all()
    assert rel_err(loss, ref) <= tol, (loss, ref)
    for k, g in rgrads.items():
        assert grads[k] is not None and torch.isfinite(grads[k]).all(), k
        assert rel_err(grads[k], g) <= tol, (k, rel_err(grads[k], g))
    return loss, grads


SLOW = pytest.mark.slow  # ~11 s each interpreted; β 0 and 0.3 at small shapes stay in the default run below


@pytest.mark.parametrize(
    "beta,temperature", [pytest.param(0.0, 1.0, marks=SLOW), pytest.param(0.3, 0.5, marks=SLOW), (1.0, 2.0)]
)
def test_divergence_odd_shapes(beta, temperature):
    _compare(make_div_inputs(37, 31, 1003), beta=beta, temperature=temperature)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_bias_softcap_padded_teacher_mask_none(beta):
    inputs = make_div_inputs(21, 20, 300, ht=24, vt=320, bias=True, scale=2.0)
    keep = torch.rand(21) < 0.7
    keep[0] = True
    _compare(inputs, upstream=torch.randn(21), beta=beta, softcap=4.0, temperature=1.5, mask=keep, reduction="none")


def test_extreme_logits_finite():
    inputs = make_div_inputs(17, 16, 200, scale=4e3)
    for beta in (0.0, 0.3, 1.0):
        loss, grads, _ = run_div(to_device(inputs, DEV), backend="triton", beta=beta, temperature=0.5)
        ref, _, _ = run_div(to_device(inputs, DEV), backend="reference", beta=beta, temperature=0.5)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
        assert rel_err(loss, ref) <= 1e-3  # fp32 logits at |z|~1e4 carry ~1e-3 absolute error


def test_all_masked_and_num_items():
    inputs = to_device(make_div_inputs(9, 16, 100, bias=True), DEV)
    loss, grads, _ = run_div(inputs, backend="triton", mask=torch.zeros(9, dtype=torch.bool, device=DEV))
    assert loss == 0 and all((g == 0).all() for g in grads.values())
    _compare(make_div_inputs(9, 16, 100), beta=0.3, num_items=20, mask=torch.rand(9) < 0.6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    inputs = to_device(make_div_inputs(19, 32, 150, dtype=dtype, bias=True), DEV)
    loss, grads, _ = run_div(inputs, backend="triton", beta=0.3)
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=0.3)
    assert rel_err(loss, ref) <= TOL
    for k in rgrads:
        assert grads[k].dtype == dtype
        assert rel_err(grads[k], rgrads[k]) <= (1e-2 if dtype == torch.bfloat16 else 2e-3), k


def test_logprobs():
    n, h, v = 37, 31, 300
    x, w, b = torch.randn(n, h, device=DEV), torch.randn(v, h, device=DEV) / 5, torch.randn(v, device=DEV)
    y = torch.randint(0, v, (n,), device=DEV)
    y[torch.rand(n, device=DEV) < 0.3] = -100
    up = torch.randn(n, device=DEV)
    out, g = run_logprobs(x, w, y, b, upstream=up, temperature=0.7, softcap=5.0, backend="triton")
    ref, rg = run_logprobs(x, w, y, b, upstream=up, temperature=0.7, softcap=5.0, backend="reference")
    assert rel_err(out, ref) <= TOL and (out[y == -100] == 0).all()
    for k in rg:
        assert rel_err(g[k], rg[k]) <= TOL, k


def test_logprobs_fp16():
    n, h, v = 20, 32, 120
    x = torch.randn(n, h, device=DEV).half()
    w = (torch.randn(v, h, device=DEV) / 5).half()
    y = torch.randint(0, v, (n,), device=DEV)
    out, g = run_logprobs(x, w, y, backend="triton")
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert rel_err(out, ref) <= TOL
    assert rel_err(g["weight"], rg["weight"]) <= 2e-3
