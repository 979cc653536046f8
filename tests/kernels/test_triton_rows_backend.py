"""``triton_rows`` (torch GEMMs per tile + one Triton row kernel) vs the float64 reference.

On CPU the row kernel runs under ``TRITON_INTERPRET=1`` (about 0.05-0.1 s per row and pass), so shapes are small
but span several 256-wide row slices (V 300-600) and, where it matters, several token tiles.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from charlit.kernels import fused_linear_divergence, triton_rows
from charlit.kernels.backends import KERNEL_BACKENDS
from charlit.kernels.debug import record_plans
from charlit.kernels.float64_reference import divergence_per_position

from .helpers import make_div_inputs, rel_err, run_div, run_logprobs, to_device
from .test_torch_backend import extreme_inputs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="triton needs CUDA or TRITON_INTERPRET=1",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5 if DEV == "cpu" else 1e-4  # CPU: as the torch backend's tests; CUDA: as the other GPU backends' tests
BACKEND = "triton_rows"


def _compare(inputs, upstream=None, tol=TOL, **kw):
    inputs = to_device(inputs, DEV)
    up = None if upstream is None else upstream.to(DEV)
    with record_plans() as plans:
        loss, grads, _ = run_div(inputs, upstream=up, backend=BACKEND, **kw)
    ref, rgrads, _ = run_div(inputs, upstream=up, backend="reference", **kw)
    assert torch.isfinite(loss).all()
    assert rel_err(loss, ref) <= tol, (loss, ref)
    for k, g in rgrads.items():
        assert grads[k] is not None and torch.isfinite(grads[k]).all(), k
        assert rel_err(grads[k], g) <= tol, (k, rel_err(grads[k], g))
    return plans


@pytest.mark.parametrize("beta,temperature", [(0.0, 1.0), (0.3, 0.5), (1.0, 2.0)])
def test_divergence_grad_in_forward(beta, temperature):
    plans = _compare(make_div_inputs(13, 16, 600), beta=beta, temperature=temperature)
    assert [(p.backend, p.rows, p.vocab, p.grad_in_forward) for p in plans] == [(BACKEND, 13, 600, True)]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_bias_softcap_padded_teacher_per_row_recomputes(beta):
    """reduction='none' with a trainable head: the forward keeps the inputs, the backward recomputes the tiles."""
    inputs = make_div_inputs(11, 20, 300, ht=24, vt=320, bias=True, scale=2.0)
    keep = torch.rand(11) < 0.7
    keep[0] = True
    plans = _compare(
        inputs, upstream=torch.randn(11), beta=beta, softcap=4.0, temperature=1.5, mask=keep, reduction="none"
    )
    assert [p.grad_in_forward for p in plans] == [False]


def test_per_row_with_frozen_head_scales_forward_dx():
    plans = _compare(
        make_div_inputs(9, 16, 300), upstream=torch.randn(9), trainable=("student_hidden",), beta=0.5, reduction="none"
    )
    assert [p.grad_in_forward for p in plans] == [True]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_several_token_tiles(beta):
    inputs = to_device(make_div_inputs(13, 16, 300, bias=True), DEV)
    leaves = [inputs[k].detach().clone().requires_grad_() for k in ("student_hidden", "student_weight", "student_bias")]
    loss = triton_rows.divergence(
        *leaves, inputs["teacher_hidden"], inputs["teacher_weight"], inputs["teacher_bias"], beta, 0.8, 6.0, False, 5
    )
    loss.backward()
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=beta, temperature=0.8, softcap=6.0, reduction="sum")
    assert rel_err(loss, ref) <= TOL
    for leaf, key in zip(leaves, ("student_hidden", "student_weight", "student_bias")):
        assert rel_err(leaf.grad, rgrads[key]) <= TOL, key


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_extreme_logits(beta):
    """|z| ~ 1e4 (exact fp32 logits), twelve fixed draws: each row max is kept apart from its log-sum, as on CPU,
    and the gradient's centre is kept against the student's argmax (seed 8, beta 1 was off by 0.7% without it)."""
    for seed in range(12):
        inputs = to_device(extreme_inputs(n=8, v=300, seed=seed), DEV)
        loss, grads, _ = run_div(inputs, backend=BACKEND, beta=beta, temperature=0.5, reduction="sum")
        ref, rgrads, _ = run_div(inputs, backend="reference", beta=beta, temperature=0.5, reduction="sum")
        assert rel_err(loss, ref) <= TOL, seed
        for k in rgrads:
            err = (grads[k].double() - rgrads[k]).abs().max().item()
            assert err <= 5e-5 * rgrads[k].abs().max().item() + 1e-7, (seed, k, err)


def test_all_masked_num_items_and_no_grad():
    inputs = to_device(make_div_inputs(7, 16, 100, bias=True), DEV)
    loss, grads, _ = run_div(inputs, backend=BACKEND, mask=torch.zeros(7, dtype=torch.bool, device=DEV))
    assert loss == 0 and all((g == 0).all() for g in grads.values())
    _compare(make_div_inputs(7, 16, 100), beta=0.3, num_items=20, mask=torch.rand(7) < 0.6)
    with torch.no_grad(), record_plans() as plans:
        got = fused_linear_divergence(**inputs, beta=1.0, backend=BACKEND)
    assert rel_err(got, fused_linear_divergence(**inputs, beta=1.0, backend="reference")) <= TOL
    assert [p.grad_in_forward for p in plans] == [False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    inputs = to_device(make_div_inputs(9, 32, 300, dtype=dtype, bias=True), DEV)
    loss, grads, _ = run_div(inputs, backend=BACKEND, beta=0.3)
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=0.3)
    assert rel_err(loss, ref) <= 1e-4  # logits are fp32 from exact half products: only the gradients are half
    for k in rgrads:
        assert grads[k].dtype == dtype
        assert rel_err(grads[k], rgrads[k]) <= (1e-2 if dtype == torch.bfloat16 else 2e-3), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_row_kernel_half_logits_and_half_gradient_in_place(dtype):
    """Half logits are upcast after load; a half gradient is written over the start of each fp32 logits row."""
    from charlit.kernels.triton import rows

    s64 = torch.randn(4, 600, dtype=torch.float64) * 3
    t64 = torch.randn(4, 600, dtype=torch.float64) * 3
    s_half, t_half = s64.to(dtype).to(DEV), t64.to(dtype).to(DEV)
    leaf = s_half.double().requires_grad_()
    ref = divergence_per_position(leaf, t_half.double(), 0.3)
    ref.sum().backward()
    loss = rows.divergence_rows(s_half, t_half, None, None, 0.3, 1.0, None)
    assert rel_err(loss, ref.detach()) <= 1e-5
    buf = s_half.float()
    grad = buf.view(dtype)[:, :600]
    loss = rows.divergence_rows(buf, t_half, None, None, 0.3, 1.0, None, grad=grad)
    assert rel_err(loss, ref.detach()) <= 1e-5
    assert rel_err(grad, leaf.grad) <= (1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("train_head", [True, False])
def test_logprobs(train_head):
    n, h, v = 13, 24, 300
    x, w, b = torch.randn(n, h, device=DEV), torch.randn(v, h, device=DEV) / 5, torch.randn(v, device=DEV)
    y = torch.randint(0, v, (n,), device=DEV)
    y[torch.rand(n, device=DEV) < 0.3] = -100
    up = torch.randn(n, device=DEV)
    kw = dict(upstream=up, train_head=train_head, temperature=0.7, softcap=5.0)
    with record_plans() as plans:
        out, g = run_logprobs(x, w, y, b, backend=BACKEND, **kw)
    ref, rg = run_logprobs(x, w, y, b, backend="reference", **kw)
    assert rel_err(out, ref) <= TOL and (out[y == -100] == 0).all()
    for k in rg:
        assert rel_err(g[k], rg[k]) <= TOL, k
    assert [p.grad_in_forward for p in plans] == [not train_head]  # frozen head: dX rows in the forward


def test_logprobs_fp16_several_tiles():
    n, h, v = 11, 32, 120
    x = torch.randn(n, h, device=DEV).half().requires_grad_()
    w = (torch.randn(v, h, device=DEV) / 5).half().requires_grad_()
    y = torch.randint(0, v, (n,), device=DEV)
    out = triton_rows.logprobs(x, w, None, y, 1.0, None, tile=4)
    out.sum().backward()
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert rel_err(out, ref) <= 1e-4
    assert x.grad.dtype == torch.float16 and rel_err(w.grad, rg["weight"]) <= 2e-3


def test_availability():
    impl = KERNEL_BACKENDS.get(BACKEND)()
    assert impl.available(torch.device(DEV))
    assert triton_rows.half_gemm_problem(torch.device("cpu")) == ""


def test_unavailable_without_interpreter_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="'triton_rows' .*cannot run on cpu.*TRITON_INTERPRET=1"):
        fused_linear_divergence(**make_div_inputs(4, 8, 16), backend=BACKEND)
