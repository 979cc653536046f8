"""merged_lora: same outputs as the adapter path, base weights restored bit-exactly, LoRA left trainable."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from charlit.models.lora_merge import merged_lora
from charlit.models.tiny import tiny_model


def _lora_model():
    model = get_peft_model(tiny_model(300, seed=1), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # peft initialises B = 0 (a no-op adapter); make ΔW real
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def test_merged_outputs_match_and_weights_come_back_exactly():
    model = _lora_model()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objects = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        expected = model(input_ids=ids).logits.double()
        with model.disable_adapter():
            bare = model(input_ids=ids).logits.double()
        with merged_lora(model):
            got = model(input_ids=ids).logits.double()
    assert (expected - bare).abs().max() > 1e-2  # the adapter matters ...
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()  # ... and the merge reproduces it
    for name, p in model.named_parameters():
        assert p is objects[name], name
        assert torch.equal(p, before[name]), name
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_merged_generation_matches_adapter_generation():
    model = _lora_model()
    ids = torch.randint(0, 300, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        with merged_lora(model):
            merged = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(plain, merged)


def test_non_peft_model_is_untouched():
    model = tiny_model(300, seed=2)
    with merged_lora(model) as same:
        assert same is model
