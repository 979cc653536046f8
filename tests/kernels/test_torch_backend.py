"""Torch (chunked) backend vs the float64 reference: loss and every student gradient."""

from __future__ import annotations

import pytest
import torch

from charlit.kernels import cpu_fused, fused_linear_divergence, torch_chunked
from charlit.kernels.debug import record_plans

from .helpers import make_div_inputs, rel_err, run_div, run_logprobs

TOL = 1e-5


@pytest.fixture(autouse=True, params=["fused", "eager"])
def elementwise_path(request, monkeypatch):
    """Every test runs on both CPU elementwise paths: the fused C++ rows and eager torch ops."""
    if request.param == "fused" and not cpu_fused.available():
        pytest.skip("fused CPU row kernels did not build here (no C++ compiler?)")
    monkeypatch.setattr(cpu_fused, "enabled", request.param == "fused")
    return request.param


def _compare(inputs, upstream=None, tol=TOL, **kw):
    loss, grads, _ = run_div(inputs, upstream=upstream, backend="torch", **kw)
    ref, rgrads, _ = run_div(inputs, upstream=upstream, backend="reference", **kw)
    assert torch.isfinite(loss).all()
    assert rel_err(loss, ref) <= tol, (loss, ref)
    for k, g in rgrads.items():
        assert grads[k] is not None, k
        assert torch.isfinite(grads[k]).all(), k
        assert rel_err(grads[k], g) <= tol, (k, rel_err(grads[k], g))
    return loss, grads


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_divergence_odd_shapes(beta, temperature):
    inputs = make_div_inputs(37, 31, 1003)
    _compare(inputs, beta=beta, temperature=temperature)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_divergence_larger_vocab_small_tiles(beta, monkeypatch):
    # several token tiles and several row blocks per tile
    monkeypatch.setattr(torch_chunked, "ROW_BLOCK_BYTES", 3 * 4 * 8192)
    inputs = make_div_inputs(70, 48, 8192, bias=True)
    keep = torch.rand(70) < 0.8
    loss, grads, leaves = run_div(inputs, backend="torch", beta=beta, mask=keep, temperature=0.7)
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=beta, mask=keep, temperature=0.7)
    assert rel_err(loss, ref) <= TOL
    for k in rgrads:
        assert rel_err(grads[k], rgrads[k]) <= TOL, k


def test_divergence_bias_softcap_padded_teacher():
    inputs = make_div_inputs(37, 31, 1003, ht=45, vt=1024, bias=True, scale=3.0)
    _compare(inputs, beta=0.3, softcap=5.0, temperature=1.3)


def extreme_inputs(n=20, h=16, v=513, seed=None):
    """|z| ~ 1e4 with integer hidden/weights so fp32 logits are exact.

    Random real-valued inputs at this scale would make the test measure fp32 GEMM rounding
    (eps * |z| ~ 1e-3 in logit space), not the numerical safety of the softmax/divergence.
    Half the rows have logits spread over thousands (independent teacher: nearly one-hot,
    disjoint distributions, saturated loss, ~0 gradient); the other half share a ~1e4 offset
    across the vocabulary with O(10) differences, so gradients there are large and checked.
    """
    g = torch.Generator().manual_seed(torch.randint(0, 2**31 - 1, ()).item() if seed is None else seed)

    def ri(lo, hi, *shape):
        return torch.randint(lo, hi + 1, shape, generator=g).float()

    half, k = n // 2, h // 2
    w = ri(-3, 3, v, h)
    w[:, :k] = ri(-3, 3, 1, k).clamp(min=1)  # same large-coordinate weights for every row (>0)
    hs, ht = ri(-1000, 1000, n, h), ri(-1000, 1000, n, h)
    # near-tie rows: big common offset on the shared coordinates, small free coordinates
    hs[:half, :k] = ht[:half, :k] = ri(600, 1000, half, k)
    hs[:half, k:] = ri(-3, 3, half, h - k)
    ht[:half, k:] = ri(-3, 3, half, h - k)
    return dict(
        student_hidden=hs.requires_grad_(),
        student_weight=w.clone().requires_grad_(),
        teacher_hidden=ht,
        teacher_weight=w,
    )


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_divergence_extreme_logits(beta, temperature):
    inputs = extreme_inputs()
    z = inputs["student_hidden"] @ inputs["student_weight"].t()
    assert z.abs().max() > 5e3
    loss, grads, _ = run_div(inputs, backend="torch", beta=beta, temperature=temperature, reduction="sum")
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=beta, temperature=temperature, reduction="sum")
    assert torch.isfinite(loss) and ref.abs() > 0.05  # genuinely different distributions
    assert rel_err(loss, ref) <= TOL
    for k in rgrads:
        assert torch.isfinite(grads[k]).all()
        # Hidden values ~1e3 make the dW/dX GEMMs accumulate products that cancel, so fp32
        # rounding alone reaches ~1.5e-5 of max|grad| here (measured over 30 seeds); and when
        # the JSD saturates (distinct peaked distributions) the exact gradient is ~1e-7 or less,
        # hence the small absolute floor.
        err = (grads[k].double() - rgrads[k]).abs().max().item()
        assert err <= 5e-5 * rgrads[k].abs().max().item() + 1e-7, (k, err)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_reduction_none_with_upstream(beta):
    inputs = make_div_inputs(37, 31, 1003, bias=True)
    keep = torch.rand(37) < 0.7
    up = torch.randn(37)
    loss, _ = _compare(inputs, upstream=up, beta=beta, mask=keep, reduction="none", temperature=2.0)
    assert loss.shape == (37,)
    assert (loss[~keep] == 0).all() and (loss[keep] != 0).all()


def test_reduction_sum_and_t2_scaling():
    inputs = make_div_inputs(37, 31, 1003)
    _compare(inputs, beta=0.3, reduction="sum", temperature=2.0, scale_by_t2=True)


def test_labels_mask_and_leading_shape():
    inputs = make_div_inputs(None, 24, 301, lead=(3, 11))
    labels = torch.randint(0, 301, (3, 11))
    labels[0, :4] = -100
    labels[2, 7:] = -100
    _, g = _compare(inputs, mask=labels, beta=1.0)
    assert (g["student_hidden"][0, :4] == 0).all() and (g["student_hidden"][2, 7:] == 0).all()
    loss_b, _, _ = run_div(inputs, backend="torch", mask=labels != -100, beta=1.0)
    loss_l, _, _ = run_div(inputs, backend="torch", mask=labels, beta=1.0)
    assert torch.equal(loss_b, loss_l)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_masked_gives_zero_loss_and_grads(reduction):
    inputs = make_div_inputs(9, 16, 257, bias=True)
    loss, grads, _ = run_div(inputs, backend="torch", mask=torch.zeros(9, dtype=torch.bool), reduction=reduction)
    assert torch.isfinite(loss).all() and (loss == 0).all()
    for k, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and (g == 0).all(), k


def test_single_position():
    inputs = make_div_inputs(9, 16, 257)
    keep = torch.zeros(9, dtype=torch.bool)
    keep[4] = True
    _, g = _compare(inputs, mask=keep, beta=0.3)
    assert (g["student_hidden"][keep] != 0).any() and (g["student_hidden"][~keep] == 0).all()


def test_num_items_and_half_batches_equal_full_batch():
    inputs = make_div_inputs(40, 31, 1003, bias=True)
    keep = torch.rand(40) < 0.75
    total = int(keep.sum())
    full, gfull, _ = run_div(inputs, backend="torch", mask=keep, beta=0.3)
    halves = [
        {k: v[:20] if k.endswith("hidden") else v for k, v in inputs.items()},
        {k: v[20:] if k.endswith("hidden") else v for k, v in inputs.items()},
    ]
    acc_loss, acc_w, acc_b = 0.0, 0.0, 0.0
    for part, m in zip(halves, (keep[:20], keep[20:])):
        l, g, _ = run_div(part, backend="torch", mask=m, beta=0.3, num_items=torch.tensor(total))
        acc_loss = acc_loss + l
        acc_w = acc_w + g["student_weight"]
        acc_b = acc_b + g["student_bias"]
    assert rel_err(acc_loss, full) <= TOL
    assert rel_err(acc_w, gfull["student_weight"]) <= TOL
    assert rel_err(acc_b, gfull["student_bias"]) <= TOL
    ref, _, _ = run_div(halves[0], backend="reference", mask=keep[:20], beta=0.3, num_items=total)
    got, _, _ = run_div(halves[0], backend="torch", mask=keep[:20], beta=0.3, num_items=total)
    assert rel_err(got, ref) <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    inputs = make_div_inputs(37, 32, 1003, dtype=dtype, bias=True)
    loss, grads, _ = run_div(inputs, backend="torch", beta=0.3)
    ref, rgrads, _ = run_div(inputs, backend="reference", beta=0.3)
    assert loss.dtype == torch.float32
    # inputs are identical; differences come only from half-precision gradient outputs
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel_err(loss, ref) <= 1e-5
    for k in rgrads:
        assert grads[k].dtype == dtype
        assert rel_err(grads[k], rgrads[k]) <= tol, k


def test_teacher_gets_no_grad():
    inputs = make_div_inputs(8, 16, 100)
    inputs["teacher_hidden"].requires_grad_()
    inputs["teacher_weight"].requires_grad_()
    loss = fused_linear_divergence(**inputs, backend="torch")
    loss.backward()
    assert inputs["teacher_hidden"].grad is None and inputs["teacher_weight"].grad is None


def test_grad_recompute_mode_matches(monkeypatch):
    inputs = make_div_inputs(37, 31, 1003, bias=True)
    monkeypatch.setattr(torch_chunked, "GRAD_IN_FORWARD", False)
    with record_plans() as plans:
        _compare(inputs, beta=0.3, softcap=4.0)
    assert [p.grad_in_forward for p in plans] == [False]


def test_never_materialises_tokens_by_vocab():
    """With a small token tile, no single op allocates anything near N*V floats."""
    n, v, h = 512, 4096, 32
    inputs = make_div_inputs(n, h, v)
    old = torch_chunked.TILE_BUDGET_BYTES, torch_chunked.LOGPROB_TILE_BUDGET_BYTES
    # 16-row tiles (2 live [B, V] buffers fused, 4 eager); log-probs keep 1-2 buffers: 16-32 rows
    torch_chunked.TILE_BUDGET_BYTES = torch_chunked.LOGPROB_TILE_BUDGET_BYTES = 4 * 2 * v * 16
    try:
        with (
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof,
            record_plans() as div_plans,
        ):
            run_div(inputs, backend="torch", beta=0.3)
            run_div(inputs, backend="torch", beta=1.0, reduction="none")
        assert [p.token_tile for p in div_plans] == [16, 16]
        x = torch.randn(n, h)
        w = torch.randn(v, h)
        with (
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof2,
            record_plans() as lp_plans,
        ):
            run_logprobs(x, w, torch.randint(0, v, (n,)), backend="torch")
    finally:
        torch_chunked.TILE_BUDGET_BYTES, torch_chunked.LOGPROB_TILE_BUDGET_BYTES = old
    assert [p.op for p in lp_plans] == ["logprobs"] and lp_plans[0].token_tile <= 32
    biggest = max(max(e.cpu_memory_usage for e in p.events()) for p in (prof, prof2))
    nv_bytes = n * v * 4
    assert 0 < biggest <= nv_bytes / 8, (biggest, nv_bytes)


def _logprob_case(n=37, h=31, v=1003):
    """Odd-shaped hidden, weight, bias, targets (~30% ignored) and a random upstream gradient."""
    x, w, b = torch.randn(n, h), torch.randn(v, h) / h**0.5, torch.randn(v)
    y = torch.randint(0, v, (n,))
    y[torch.rand(n) < 0.3] = -100
    return x, w, b, y, torch.randn(n)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_logprobs_matches_reference(temperature):
    x, w, b, y, up = _logprob_case()
    out, g = run_logprobs(x, w, y, b, upstream=up, temperature=temperature, softcap=6.0, backend="torch")
    ref, rg = run_logprobs(x, w, y, b, upstream=up, temperature=temperature, softcap=6.0, backend="reference")
    assert (out[y == -100] == 0).all()
    assert rel_err(out, ref) <= TOL
    for k in rg:
        assert rel_err(g[k], rg[k]) <= TOL, k


def test_logprobs_extreme_and_all_ignored():
    n, h, v = 20, 16, 700
    # integer inputs: exact fp32 logits with |z| ~ 1e4 (see extreme_inputs)
    x, w = torch.randint(-1000, 1001, (n, h)).float(), torch.randint(-3, 4, (v, h)).float()
    y = torch.randint(0, v, (n,))
    out, g = run_logprobs(x, w, y, backend="torch")
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert torch.isfinite(out).all() and rel_err(out, ref) <= TOL
    for k in rg:
        assert torch.isfinite(g[k]).all() and rel_err(g[k], rg[k]) <= TOL
    out, g = run_logprobs(x, w, torch.full((n,), -100), backend="torch")
    assert (out == 0).all() and all((t == 0).all() for t in g.values())


def test_logprobs_half_and_leading_shape():
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    w = (torch.randn(500, 32) / 6).to(torch.bfloat16)
    y = torch.randint(0, 500, (2, 9))
    out, g = run_logprobs(x, w, y, backend="torch")
    ref, rg = run_logprobs(x, w, y, backend="reference")
    assert out.shape == (2, 9) and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(g["weight"], rg["weight"]) <= 1e-2


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_frozen_head_per_row_grads_computed_in_forward(beta):
    """reduction="none" with a frozen lm_head: dX rows come from the forward, scaled per row."""
    inputs = make_div_inputs(37, 31, 1003, bias=True)
    up = torch.randn(37)
    kw = dict(beta=beta, temperature=2.0, softcap=5.0, reduction="none", trainable=("student_hidden",))
    with record_plans() as plans:
        loss, grads, _ = run_div(inputs, upstream=up, backend="torch", **kw)
    assert [p.grad_in_forward for p in plans] == [True]
    ref, rgrads, _ = run_div(inputs, upstream=up, backend="reference", **kw)
    assert rel_err(loss, ref) <= TOL
    assert rel_err(grads["student_hidden"], rgrads["student_hidden"]) <= TOL


@pytest.mark.parametrize("softcap", [None, 6.0])
def test_logprobs_frozen_head_grads_computed_in_forward(softcap):
    x, w, b, y, up = _logprob_case()
    kw = dict(upstream=up, temperature=0.5, softcap=softcap, train_head=False)
    with record_plans() as plans:
        out, g = run_logprobs(x, w, y, b, backend="torch", **kw)
    assert [p.grad_in_forward for p in plans] == [True]
    ref, rg = run_logprobs(x, w, y, b, backend="reference", **kw)
    assert rel_err(out, ref) <= TOL
    assert rel_err(g["hidden"], rg["hidden"]) <= TOL


def test_no_grad_mode_skips_gradient_work():
    inputs = make_div_inputs(8, 16, 50)
    with torch.no_grad(), record_plans() as plans:
        loss = fused_linear_divergence(**inputs, backend="torch")
    assert [p.grad_in_forward for p in plans] == [False]
    ref = fused_linear_divergence(**inputs, backend="reference")
    assert rel_err(loss, ref) <= TOL
