"""Under Lightning's ``bf16-mixed`` on CPU (``torch.autocast("cpu", bfloat16)`` around the step) the fused losses
still compute and accumulate in fp32: the same value and gradients as outside autocast, against float64."""

import torch

from charlit.kernels import fused_linear_divergence, fused_linear_logprobs


def _inputs(n=48, h=32, v=3000):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, h, generator=g, requires_grad=True)
    ws = (0.3 * torch.randn(v, h, generator=g)).requires_grad_()
    return xs, ws, torch.randn(n, h, generator=g), 0.3 * torch.randn(v, h, generator=g)


def test_divergence_under_cpu_autocast_is_fp32():
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


def test_logprobs_under_cpu_autocast_are_fp32():
    xs, ws, _, _ = _inputs()
    targets = torch.arange(xs.shape[0]) * 7
    reference = (xs.double() @ ws.double().T).log_softmax(-1)[range(xs.shape[0]), targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_linear_logprobs(xs, ws, targets)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), reference, rtol=1e-5, atol=1e-5)
