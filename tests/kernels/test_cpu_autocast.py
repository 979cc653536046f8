"""Under Lightning's ``bf16-mixed`` on CPU (``torch.autocast("cpu", bfloat16)`` around the step) the fused losses
compute their lm_head products in the precision ``kernels.cpu_gemm`` names (``cpu_gemm``): fp32 gives the same value
and gradients as outside autocast, against float64; bf16 gives float64's answer for bf16 operands and bf16 logits,
in forward and in a backward that recomputes its tiles outside autocast; ``auto`` follows this machine's timing."""

import pytest
import torch

from charlit.kernels import cpu_gemm, fused_linear_divergence, fused_linear_logprobs, torch_chunked


@pytest.fixture
def gemm_setting():
    """Set ``kernels.cpu_gemm`` for one test, restored afterwards."""
    before = cpu_gemm._setting
    yield cpu_gemm.set_setting
    cpu_gemm.set_setting(before)


def _inputs(n=48, h=32, v=3000):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, h, generator=g, requires_grad=True)
    ws = (0.3 * torch.randn(v, h, generator=g)).requires_grad_()
    return xs, ws, torch.randn(n, h, generator=g), 0.3 * torch.randn(v, h, generator=g)


def _bf16_reference(xs, ws, xt, wt):
    """Reverse KL in float64 from bf16-rounded operands, each product's logits rounded to bf16 once."""
    xs64, ws64 = (t.detach().bfloat16().double().requires_grad_() for t in (xs, ws))

    def logits(x, w):
        z = x @ w.T
        return z + (z.bfloat16().double() - z).detach()  # rounded value, exact gradient (straight through)

    student = logits(xs64, ws64).log_softmax(-1)
    teacher = logits(xt.bfloat16().double(), wt.bfloat16().double()).log_softmax(-1)
    loss = (student.exp() * (student - teacher)).sum()
    return loss, torch.autograd.grad(loss, (xs64, ws64))


def test_divergence_under_cpu_autocast_in_fp32(gemm_setting):
    gemm_setting("fp32")
    xs, ws, xt, wt = _inputs()
    reference = fused_linear_divergence(
        xs.double(), ws.double(), xt.double(), wt.double(), beta=1.0, backend="reference"
    )
    plain = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    plain_grads = torch.autograd.grad(plain, (xs, ws))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), reference, rtol=1e-5, atol=0)  # bf16 would be off by ~1e-4
    for got, want in zip(torch.autograd.grad(mixed, (xs, ws)), plain_grads):
        torch.testing.assert_close(got, want)


def test_logprobs_under_cpu_autocast_in_fp32(gemm_setting):
    gemm_setting("fp32")
    xs, ws, _, _ = _inputs()
    targets = torch.arange(xs.shape[0]) * 7
    reference = (xs.double() @ ws.double().T).log_softmax(-1)[range(xs.shape[0]), targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_linear_logprobs(xs, ws, targets)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), reference, rtol=1e-5, atol=1e-5)


def test_divergence_under_cpu_autocast_in_bf16(gemm_setting):
    gemm_setting("bf16")
    xs, ws, xt, wt = _inputs()
    want, want_grads = _bf16_reference(xs, ws, xt, wt)
    plain = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    grads = {}
    for reduction in ("sum", "none"):  # none + a trainable head: tiles recomputed in backward, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = fused_linear_divergence(xs, ws, xt, wt, beta=1.0, reduction=reduction).sum()
        assert abs(mixed.item() - plain.item()) > 1e-3 * abs(plain.item())  # bf16 products, not fp32
        torch.testing.assert_close(mixed.double(), want, rtol=2e-4, atol=0)
        grads[reduction] = torch.autograd.grad(mixed, (xs, ws))
        for got, exact in zip(grads[reduction], want_grads):
            torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=2e-3 * exact.abs().max().item())
    for eager, recomputed in zip(grads["sum"], grads["none"]):  # the backward kept the forward's bf16 products
        torch.testing.assert_close(recomputed, eager, rtol=1e-5, atol=1e-6)


def test_logprobs_under_cpu_autocast_in_bf16(gemm_setting):
    gemm_setting("bf16")
    xs, ws, _, _ = _inputs()
    targets = torch.arange(xs.shape[0]) * 7
    z = xs.detach().bfloat16().double() @ ws.detach().bfloat16().double().T
    reference = z.bfloat16().double().log_softmax(-1)[range(xs.shape[0]), targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_linear_logprobs(xs, ws, targets)
    torch.testing.assert_close(mixed.double(), reference, rtol=0, atol=1e-4)
    assert (mixed.double() - fused_linear_logprobs(xs, ws, targets).double()).abs().max() > 1e-4


def test_auto_follows_the_machines_timing(gemm_setting):
    gemm_setting("auto")
    xs, ws, xt, wt = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = cpu_gemm.gemm_dtype(ws)
        mixed = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    assert chosen == {"bf16": torch.bfloat16, "fp32": torch.float32}[cpu_gemm.bf16_faster(*ws.shape)]
    plain = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    assert (mixed.item() == plain.item()) is (chosen == torch.float32)
    assert cpu_gemm.gemm_dtype(ws) == torch.float32  # outside autocast: always fp32


def test_a_changed_weight_is_cast_again(gemm_setting):
    gemm_setting("bf16")
    xs, ws, xt, wt = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
        assert torch_chunked._casts.get(ws, torch.bfloat16) is torch_chunked._casts.get(ws, torch.bfloat16)
        ws.mul_(1.5)
        after = fused_linear_divergence(xs, ws, xt, wt, beta=1.0)
    assert not torch.equal(before, after)


def test_a_bad_setting_names_the_choices():
    with pytest.raises(ValueError, match="kernels.cpu_gemm='fp16'.*auto, fp32, bf16"):
        cpu_gemm.set_setting("fp16")
