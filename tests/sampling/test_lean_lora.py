"""Lean LoRA decoding layers: peft's outputs, restored modules, disabled adapters left alone."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from charlit.models.tiny import tiny_model
from charlit.sampling.lean_lora import LeanLoraLinear, lean_adapters


def _lora_model():
    model = get_peft_model(
        tiny_model(300, seed=1), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1)
    )
    with torch.no_grad():  # peft initialises B = 0; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def test_same_logits_as_peft_and_modules_restored():
    model = _lora_model()
    ids = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(3))
    before = dict(model.named_modules())
    with torch.no_grad():
        adapted = model(input_ids=ids).logits.double()
        with model.disable_adapter():
            bare = model(input_ids=ids).logits.double()
        with lean_adapters(model) as swapped:
            assert swapped and sum(isinstance(m, LeanLoraLinear) for m in model.modules()) == 7 * 2
            lean = model(input_ids=ids).logits.double()
    assert (lean - adapted).abs().max() <= 1e-5 * adapted.abs().max()
    assert (bare - adapted).abs().max() > 1e-2  # the adapter matters, so the comparison means something
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_disabled_adapters_are_left_alone():
    model = _lora_model()
    with model.disable_adapter(), lean_adapters(model) as swapped:
        assert not swapped and not any(isinstance(m, LeanLoraLinear) for m in model.modules())
