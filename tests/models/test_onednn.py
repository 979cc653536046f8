"""oneDNN linear layers: float64-exact products and gradients, unchanged state dicts, decoding swaps."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from charlit.models import onednn
from charlit.models.tiny import tiny_model

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


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_and_its_gradients_match_float64(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*shape, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    upstream = torch.randn(*shape[:-1], 4, generator=g)
    x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
    b32 = b.clone().requires_grad_() if with_bias else None
    y = onednn.linear(x32, w32, b32)
    y.backward(upstream)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    ref = x64 @ w64.T + (b64 if with_bias else 0.0)
    ref.backward(upstream.double())
    for got, expected in ((y, ref), (x32.grad, x64.grad), (w32.grad, w64.grad)) + (
        ((b32.grad, b64.grad),) if with_bias else ()
    ):
        assert (got.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_frozen_weight_gets_no_gradient_and_no_saved_input():
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(4, 5)
    y = onednn.linear(x, w)
    assert y.grad_fn is not None and y.grad_fn.saved_tensors[0] is None  # only W is kept for dX
    y.sum().backward()
    assert torch.allclose(x.grad, w.sum(0).expand(3, 5), atol=1e-6)


def test_autocast_gets_its_lower_precision_product():
    """Under CPU autocast (``trainer.precision=bf16-mixed``) the product is autocast's bf16 one, not oneDNN's fp32."""
    x, w = torch.randn(6, 32, requires_grad=True), torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = onednn.linear(x, w)
    assert y.dtype == torch.bfloat16
    exact = (x.double() @ w.double().t()).float()
    assert torch.allclose(y.float(), exact, rtol=0.05, atol=0.05) and not torch.equal(y.float(), exact)
    y.float().sum().backward()
    assert torch.allclose(x.grad, w.sum(0).expand(6, 32), rtol=0.02, atol=0.05)


def test_accelerate_keeps_names_and_state_dict_and_trains_the_same():
    import copy

    plain = _lora_model().train()
    fast = copy.deepcopy(plain)
    assert onednn.accelerate(fast) == 1 + 7 * 2 * 3
    assert fast.state_dict().keys() == plain.state_dict().keys()
    ids = _ids()
    losses = []
    for model in (plain, fast):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    assert torch.allclose(losses[0][0], losses[1][0], rtol=1e-5)
    assert all(torch.allclose(losses[0][1][n], g, rtol=1e-4, atol=1e-6) for n, g in losses[1][1].items())


def test_reads_the_current_weight():
    linear = torch.nn.Linear(5, 4)
    wrapped = onednn.OneDnnLinear(linear)
    x = torch.randn(2, 5)
    with torch.no_grad():
        linear.weight.mul_(2.0)  # no cached copy to go stale
        got = wrapped(x)
    expected = (x.double() @ linear.weight.double().T + linear.bias.double()).float()
    assert torch.allclose(got, expected, atol=1e-5)


def test_sampler_generation_matches_plain_generate():
    from charlit.sampling.base import SamplingParams
    from charlit.sampling.hf import HFSampler

    class Tok:  # the sampler needs only these
        eos_token_id, pad_token_id = 299, 0

    model = _lora_model()
    prompt = [5, 17, 33, 2, 9]
    with torch.no_grad():
        plain = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=[299]
        )[0, len(prompt) :].tolist()
    got = HFSampler(Tok()).generate(model, [prompt], SamplingParams(max_new_tokens=8, temperature=0.0))[0]
    assert got == plain[: len(got)] and len(got) == len(plain)
