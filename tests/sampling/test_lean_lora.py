"""Lean LoRA decoding layers: peft's outputs, restored modules, disabled adapters left alone."""

from __future__ import annotations

import torch

from charlit.sampling.lean_lora import LeanLoraLinear, lean_adapters
from tests.sampling.helpers import lora_model


def test_same_logits_as_peft_and_modules_restored():
    model = lora_model()
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
    model = lora_model()
    with model.disable_adapter(), lean_adapters(model) as swapped:
        assert not swapped and not any(isinstance(m, LeanLoraLinear) for m in model.modules())
