"""Frozen linear weights cast to bf16 once under CPU autocast: the same products autocast runs, recast after a
change, and trainable or non-autocast layers untouched."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from charlit.models.frozen_casts import CASTS, cache_frozen_casts
from charlit.models.tiny import tiny_model


def _layer(frozen: bool = True) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """A patched layer and an unpatched twin with the same weights."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 12)
    plain.requires_grad_(not frozen)
    patched = torch.nn.Linear(24, 12)
    patched.load_state_dict(plain.state_dict())
    patched.requires_grad_(not frozen)
    assert cache_frozen_casts(patched) == 1
    return patched, plain


def test_under_autocast_a_frozen_layer_gives_autocasts_product_and_keeps_its_cast():
    patched, plain = _layer()
    x = torch.randn(5, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = patched(x), plain(x)
        again = patched(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want) and torch.equal(again, want)
    cast = CASTS.get(patched.weight, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        patched(x)
    assert CASTS.get(patched.weight, torch.bfloat16) is cast  # cast once
    (grad,) = torch.autograd.grad(got.float().sum(), x)
    (want_grad,) = torch.autograd.grad(want.float().sum(), x)
    assert torch.equal(grad, want_grad)


def test_a_changed_weight_is_cast_again():
    patched, plain = _layer()
    x = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        patched(x)
    with torch.no_grad():
        patched.weight.mul_(2.0)
        plain.weight.mul_(2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(patched(x), plain(x))
    with torch.no_grad():
        patched.bias.add_(1.0)
        plain.bias.add_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(patched(x), plain(x))


def test_trainable_layers_and_fp32_runs_take_the_layers_own_forward():
    patched, plain = _layer(frozen=False)
    x = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patched(x)
    out.float().sum().backward()
    assert patched.weight.grad is not None
    frozen, twin = _layer()
    kept = len(CASTS)
    assert torch.equal(frozen(x), twin(x)) and frozen(x).dtype == torch.float32
    assert len(CASTS) == kept  # nothing cast outside autocast


def test_a_lora_model_trains_as_without_the_cache():
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    losses, grads = [], []
    for patch in (False, True):
        torch.manual_seed(0)  # peft draws lora_A from the global generator
        model = get_peft_model(tiny_model(50, seed=4), LoraConfig(r=4, target_modules="all-linear"))
        if patch:
            assert cache_frozen_casts(model) > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_replaced_weight_is_cast_again():
    patched, plain = _layer()
    x = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        patched(x)
    patched.weight = torch.nn.Parameter(2 * patched.weight.detach(), requires_grad=False)
    plain.weight = torch.nn.Parameter(2 * plain.weight.detach(), requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(patched(x), plain(x))


def test_a_cast_made_in_inference_mode_serves_training():
    """Lightning validates under ``torch.inference_mode``; the copy made there is used by the next training step."""
    patched, plain = _layer()
    x = torch.randn(5, 24, requires_grad=True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        patched(x.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = patched(x), plain(x)
    assert torch.equal(got, want)
    got.float().sum().backward()
    assert x.grad is not None
