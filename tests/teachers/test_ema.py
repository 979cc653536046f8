import pytest
import torch

from charlit.models.tiny import tiny_model
from charlit.teachers.ema import EmaWeights


def test_update_is_decay_times_ema_plus_one_minus_decay_times_param():
    model = tiny_model(97, seed=1)
    ema = EmaWeights(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update()
    for s, p0, (_, p) in zip(ema.shadow, start, ema.params):
        torch.testing.assert_close(s, 0.9 * p0 + 0.1 * p.detach(), rtol=1e-6, atol=1e-7)


def test_swapped_uses_shadow_without_copies_and_restores():
    model = tiny_model(97, seed=1)
    ema = EmaWeights(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    live = [p.data_ptr() for p in model.parameters()]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), ema.swapped():
        assert all(p.data.data_ptr() == s.data_ptr() for (_, p), s in zip(ema.params, ema.shadow))
        swapped = model(ids).logits
    assert [p.data_ptr() for p in model.parameters()] == live
    with torch.no_grad():
        reference = tiny_model(97, seed=1)(ids).logits  # the EMA still equals the initial weights
    torch.testing.assert_close(swapped, reference)


def test_lora_only_adapter_parameters_get_a_shadow():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(97, seed=1), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    ema = EmaWeights(model, decay=0.99)
    assert ema.params and all("lora_" in name for name, _ in ema.params)


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match=r"method.ema_decay=1.0 must be in \[0, 1\)"):
        EmaWeights(tiny_model(97, seed=1), decay=1.0)
