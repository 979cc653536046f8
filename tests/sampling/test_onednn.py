"""oneDNN decoding weights: same logits as the default path, restored modules, a cache that notices changes."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from charlit.models.tiny import tiny_model
from charlit.sampling import onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _lora_model():
    model = get_peft_model(tiny_model(300, seed=1), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # peft initialises B = 0; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def _ids():
    return torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(0))


def test_same_logits_and_modules_restored():
    model = _lora_model()
    before = dict(model.named_modules())
    cache = onednn.FrozenLinearCache()
    with torch.no_grad():
        expected = model(input_ids=_ids()).logits
        with cache.swapped_in(model):
            swapped = [n for n, m in model.named_modules() if type(m).__name__ == "MkldnnLinear"]
            got = model(input_ids=_ids()).logits
    # the frozen base layers and the tied lm_head are swapped; the trainable adapters are not
    assert "base_model.model.lm_head" in swapped and not any("lora_" in n for n in swapped)
    assert len(swapped) == 1 + 7 * 2  # lm_head + 7 linear layers in each of 2 blocks
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_cache_is_reused_until_the_weight_changes():
    model = _lora_model()
    cache = onednn.FrozenLinearCache()
    head = model.base_model.model.lm_head
    with cache.swapped_in(model):
        first = model.base_model.model.lm_head
    with cache.swapped_in(model):
        assert model.base_model.model.lm_head is first
    with torch.no_grad():
        head.weight.mul_(2.0)  # in place: bumps the version counter
        expected = model(input_ids=_ids()).logits
        with cache.swapped_in(model):
            assert model.base_model.model.lm_head is not first
            got = model(input_ids=_ids()).logits
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_sampler_generation_matches_plain_generate():
    from charlit.sampling.base import SamplingParams
    from charlit.sampling.hf import HFSampler

    class Tok:  # the sampler needs only these
        eos_token_id, pad_token_id = 299, 0

    model = _lora_model()
    prompt = [5, 17, 33, 2, 9]
    with torch.no_grad():
        plain = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0,
                               eos_token_id=[299])[0, len(prompt):].tolist()
    got = HFSampler(Tok()).generate(model, [prompt], SamplingParams(max_new_tokens=8, temperature=0.0))[0]
    assert got == plain[: len(got)] and len(got) == len(plain)
