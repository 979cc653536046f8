"""oneDNN decoding layers: the same logits as the default path, restored modules, no stale weights."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from charlit.models.tiny import tiny_model
from charlit.sampling import onednn

pytestmark = pytest.mark.skipif(not onednn.supported(torch.nn.Linear(2, 2)), reason="torch built without oneDNN")


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
    with torch.no_grad():
        expected = model(input_ids=_ids()).logits
        with onednn.swapped_in(model):
            swapped = [n for n, m in model.named_modules() if isinstance(m, onednn.OneDnnLinear)]
            got = model(input_ids=_ids()).logits
    # every linear layer: the base layers under LoRA, the adapters' own, and the tied lm_head
    assert "base_model.model.lm_head" in swapped and any("lora_A" in n for n in swapped)
    assert len(swapped) == 1 + 7 * 2 * 3  # lm_head + (base, lora_A, lora_B) of 7 layers in each of 2 blocks
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_reads_the_current_weight_and_falls_back_with_grad():
    linear = torch.nn.Linear(5, 4)
    wrapped = onednn.OneDnnLinear(linear)
    x = torch.randn(2, 5, dtype=torch.float64).float()
    with torch.no_grad():
        linear.weight.mul_(2.0)   # no cached copy to go stale
        got = wrapped(x)
    expected = (x.double() @ linear.weight.double().T + linear.bias.double()).float()
    assert torch.allclose(got, expected, atol=1e-6)
    y = wrapped(x)               # gradients enabled: the autograd path
    y.sum().backward()
    assert linear.weight.grad is not None


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
