"""Training attention on the CPU under bf16 autocast: from fp32 copies where the machine's timing says so (float64
attention as the reference), transformers' own SDPA everywhere else, and the model switched to it at load."""

from __future__ import annotations

import math

import pytest
import torch

from charlit.models import cpu_attention
from charlit.models.tiny import tiny_model


def _qkv(tokens=24, heads=4, kv_heads=2, dim=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    shapes = [(2, heads, tokens, dim), (2, kv_heads, tokens, dim), (2, kv_heads, tokens, dim)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def _float64_attention(q, k, v):
    q, k, v = (t.detach().double() for t in (q, k, v))
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v


class _Attention(torch.nn.Module):
    """What transformers' SDPA attention reads from the layer module."""

    is_causal = True

    def __init__(self, heads, kv_heads):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads


@pytest.mark.parametrize("fp32", [True, False])
def test_under_bf16_autocast_with_gradients_the_timed_choice_decides(monkeypatch, fp32):
    monkeypatch.setattr(cpu_attention, "fp32_faster", lambda *shape: fp32)
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cpu_attention.attention(_Attention(4, 2), q, k, v, None, is_causal=True)
    assert out.dtype == torch.bfloat16
    exact = _float64_attention(q, k, v).transpose(1, 2)  # transformers returns [batch, tokens, heads, dim]
    # from fp32 copies the only rounding is the output's to bf16; bf16 attention rounds its scores and weights too
    error = (out.double() - exact).abs().max().item()
    assert error < (2**-8 * exact.abs().max().item() if fp32 else 0.05)
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_fp32_copies_are_closer_to_float64_than_bf16_attention(monkeypatch):
    q, k, v = _qkv(tokens=64)
    exact = _float64_attention(q, k, v).transpose(1, 2)
    errors = {}
    for fp32 in (True, False):
        monkeypatch.setattr(cpu_attention, "fp32_faster", lambda *shape, fp32=fp32: fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = cpu_attention.attention(_Attention(4, 2), q, k, v, None, is_causal=True)
        errors[fp32] = (out.double() - exact).abs().mean().item()
    assert errors[True] < errors[False]


def test_without_gradients_or_autocast_it_is_transformers_sdpa(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setattr(cpu_attention, "fp32_faster", lambda *shape: pytest.fail("timed outside training"))
    q, k, v = _qkv(dtype=torch.float32)
    module = _Attention(4, 2)
    got, _ = cpu_attention.attention(module, q, k, v, None, is_causal=True)
    assert torch.equal(got, sdpa_attention_forward(module, q, k, v, None, is_causal=True)[0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = cpu_attention.attention(module, q, k, v, None, is_causal=True)
        want, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True)
    assert torch.equal(got, want)


def test_a_model_is_switched_and_trains_as_before(monkeypatch):
    monkeypatch.setattr(cpu_attention, "fp32_faster", lambda *shape: True)
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    losses = {}
    for switched in (False, True):
        model = tiny_model(50, seed=3)
        assert model.config._attn_implementation == "sdpa"
        if switched:
            assert cpu_attention.use(model) and model.config._attn_implementation == cpu_attention.NAME
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[switched] = model(input_ids=ids, labels=ids).loss
        losses[switched].backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert torch.allclose(losses[True], losses[False], rtol=2e-2)
    model = tiny_model(50, seed=3)
    model.set_attn_implementation("eager")
    assert not cpu_attention.use(model)  # only SDPA models are switched


def test_the_timing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLIT_CALIBRATION", str(tmp_path / "calibration.json"))
    cpu_attention.fp32_faster.cache_clear()
    first = cpu_attention.fp32_faster(4, 2, 16, 64)
    assert "cpu_training_attention" in (tmp_path / "calibration.json").read_text()
    cpu_attention.fp32_faster.cache_clear()
    assert cpu_attention.fp32_faster(4, 2, 16, 64) == first
    cpu_attention.fp32_faster.cache_clear()
