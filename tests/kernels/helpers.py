"""Shared input factories and error metrics for the kernel tests."""

from __future__ import annotations

import torch

from charlit.kernels import fused_linear_divergence, fused_linear_logprobs


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max-abs error relative to the reference's max-abs value (normwise, robust to zeros)."""
    got, ref = got.double(), ref.double()
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    return err / scale if scale > 0 else err


def to_device(inputs: dict, device: str) -> dict:
    """``inputs`` (tensors or None) moved to ``device``, leaves again where they required grad."""
    return {
        k: (v.detach().to(device).requires_grad_(v.requires_grad) if v is not None else None) for k, v in inputs.items()
    }


def make_div_inputs(n, hs, vs, ht=None, vt=None, dtype=torch.float32, bias=False, scale=1.0, seed=None, lead=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
    ht = ht or hs
    vt = vt or vs
    shape = lead if lead is not None else (n,)

    def r(*s):
        return torch.randn(*s, generator=g)

    d = dict(
        student_hidden=(r(*shape, hs) * scale).to(dtype).requires_grad_(),
        student_weight=(r(vs, hs) / hs**0.5).to(dtype).requires_grad_(),
        teacher_hidden=(r(*shape, ht) * scale).to(dtype),
        teacher_weight=(r(vt, ht) / ht**0.5).to(dtype),
    )
    if bias:
        d["student_bias"] = r(vs).to(dtype).requires_grad_()
        d["teacher_bias"] = r(vt).to(dtype)
    return d


STUDENT_KEYS = ("student_hidden", "student_weight", "student_bias")


def run_div(inputs, upstream=None, trainable=STUDENT_KEYS, **kw):
    """Loss and gradients of the ``trainable`` student tensors (fresh leaves each call)."""
    leaves = {
        k: (v.detach().clone().requires_grad_(k in trainable) if v is not None else None) for k, v in inputs.items()
    }
    loss = fused_linear_divergence(**leaves, **kw)
    if upstream is None:
        loss.backward() if loss.dim() == 0 else loss.backward(torch.ones_like(loss))
    else:
        loss.backward(upstream)
    grads = {k: leaves[k].grad for k in trainable if k in leaves}
    return loss.detach(), grads, leaves


def run_logprobs(x, w, y, b=None, upstream=None, train_head=True, **kw):
    """Log-probs and the gradients of hidden (and, with ``train_head``, weight and bias)."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_(train_head)
    b = None if b is None else b.detach().clone().requires_grad_(train_head)
    out = fused_linear_logprobs(x, w, y, bias=b, **kw)
    out.backward(upstream if upstream is not None else torch.ones_like(out))
    grads = {"hidden": x.grad}
    if train_head:
        grads["weight"] = w.grad
        if b is not None:
            grads["bias"] = b.grad
    return out.detach(), grads
