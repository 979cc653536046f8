"""bf16 decoding (charlit.sampling.precision): bf16-rounded products, LoRA merged, weights restored, the drawn tokens'
log-probabilities exact, and the precision chosen by timing or forced."""

from __future__ import annotations

import pytest
import torch

from charlit.models.tiny import tiny_model
from charlit.sampling import decode
from charlit.sampling.base import SamplingParams
from charlit.sampling.hf import HFSampler
from charlit.sampling.precision import Bf16Linear, bf16_linears, calibrate
from tests.sampling.helpers import PAD, VOCAB, left_padded, lora_model


def test_bf16_linear_is_the_product_of_bf16_rounded_operands():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    x = torch.randn(5, 48, generator=gen)
    got = Bf16Linear(linear)(x)
    assert got.dtype == torch.float32
    w, b = linear.weight.detach().bfloat16().double(), linear.bias.detach().bfloat16().double()
    reference = x.bfloat16().double() @ w.T + b
    # the product accumulates in fp32 and is rounded once to bf16 (relative 2^-8)
    assert ((got.double() - reference).abs() <= 2**-8 * reference.abs() + 1e-3).all()
    assert (
        got.double() - (x.double() @ linear.weight.detach().double().T + linear.bias.detach().double())
    ).abs().max() > 0


def test_bf16_linears_merge_lora_and_restore_every_weight():
    model = lora_model()
    ids = torch.randint(1, VOCAB, (3, 7), generator=torch.Generator().manual_seed(3))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    with torch.no_grad():
        adapted = model(input_ids=ids).logits.double()
        with model.disable_adapter():
            bare = model(input_ids=ids).logits.double()
        with bf16_linears(model):
            assert any(isinstance(m, Bf16Linear) for m in model.modules())
            low = model(input_ids=ids).logits.double()
    scale = adapted.abs().max()
    assert (low - adapted).abs().max() <= 0.05 * scale  # bf16 rounding, not a different model
    assert (low - bare).abs().max() > 5 * (low - adapted).abs().max()  # the adapter is in the bf16 copy
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # bit-exact afterwards
    after = dict(model.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in modules)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_the_drawn_tokens_and_do_not_change_the_draws(temperature):
    model = tiny_model(VOCAB, seed=2).eval()
    prompts = [[5, 17, 33, 2, 9], [8, 1]]
    ids, mask = left_padded(prompts)
    params = SamplingParams(max_new_tokens=6, temperature=temperature)
    torch.manual_seed(7)
    plain = decode.sample(model, ids, mask, params, [VOCAB], PAD)
    torch.manual_seed(7)
    tokens, logprobs = decode.sample(model, ids, mask, params, [VOCAB], PAD, logprobs=True)
    assert torch.equal(plain, tokens)
    for row, prompt in enumerate(prompts):  # float64 reference from one full forward of prompt + reply
        reply = tokens[row].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1].double()
        expected = (logits / temperature).log_softmax(-1).gather(1, torch.tensor(reply)[:, None])[:, 0]
        torch.testing.assert_close(logprobs[row].double(), expected, atol=1e-4, rtol=0)


def test_greedy_steps_report_zero():
    model = tiny_model(VOCAB, seed=2).eval()
    ids, mask = left_padded([[5, 17, 33]])
    _, logprobs = decode.sample(model, ids, mask, SamplingParams(max_new_tokens=4, temperature=0.0), [VOCAB], PAD, True)
    assert logprobs.abs().sum() == 0


class _Tokenizer:
    pad_token_id, eos_token_id = PAD, VOCAB - 1


def test_bf16_sampler_returns_aligned_logprobs_close_to_the_fp32_model():
    model = lora_model()
    sampler = HFSampler(_Tokenizer(), batch_size=2, precision="bf16")
    assert sampler.off_policy(model)
    prompts = [[5, 17, 33, 2, 9], [8, 1], [44, 45, 46]]
    responses, logprobs = sampler.generate(model, prompts, SamplingParams(max_new_tokens=5), seed=3, logprobs=True)
    assert [len(r) for r in responses] == [len(lp) for lp in logprobs]
    for prompt, reply, lp in zip(prompts, responses, logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1].double()
        fp32 = logits.log_softmax(-1).gather(1, torch.tensor(reply)[:, None])[:, 0]
        gap = (torch.tensor(lp, dtype=torch.float64) - fp32).abs()
        assert 0 < gap.max() < 0.1, gap  # bf16 weights: close to, but not exactly, the learner's distribution


def test_precision_is_forced_or_timed_and_cached(tmp_path, monkeypatch):
    model = tiny_model(VOCAB, seed=2)
    assert not HFSampler(_Tokenizer(), precision="fp32").off_policy(model)
    assert HFSampler(_Tokenizer(), precision="bf16").off_policy(model)
    assert not HFSampler(_Tokenizer(), precision="bf16").off_policy(model.to(torch.bfloat16))  # nothing to copy
    path = tmp_path / "calibration.json"
    choice, record = calibrate(tiny_model(VOCAB, seed=2), path=path)
    assert choice in ("fp32", "bf16") and set(record["seconds"]) == {"fp32", "bf16"} and not record["cached"]
    again, record = calibrate(tiny_model(VOCAB, seed=2), path=path)
    assert again == choice and record["cached"]
    monkeypatch.setattr("charlit.sampling.precision.calibrate", lambda m, path=None: ("bf16", {}))
    auto = HFSampler(_Tokenizer(), precision="auto", fused=False)  # the fused forward times itself (test_fused_llama)
    assert auto.off_policy(tiny_model(VOCAB, seed=2))
    with pytest.raises(ValueError, match="sampler.precision='half'"):
        HFSampler(_Tokenizer(), precision="half")


@pytest.mark.parametrize("fused", [True, False])
def test_a_bf16_mixed_steps_autocast_does_not_reach_fp32_decoding(fused):
    """An on-policy step samples inside Lightning's CPU autocast; ``sampler.precision=fp32`` still decodes in fp32:
    the log-probabilities match the fp32 model's float64 ones, as outside autocast."""
    model = lora_model()
    sampler = HFSampler(None, precision="fp32", fused=fused)
    sampler.tokenizer = type("Tokenizer", (), {"pad_token_id": PAD, "eos_token_id": VOCAB - 1})()
    prompts = [[5, 17, 33, 2, 9], [8, 1, 4]]
    params = SamplingParams(max_new_tokens=5, temperature=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        replies, logprobs = sampler.generate(model, prompts, params, seed=3, logprobs=True)
    for prompt, reply, got in zip(prompts, replies, logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1].double()
        expected = logits.log_softmax(-1).gather(1, torch.tensor(reply)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(got).double(), expected, atol=1e-4, rtol=0)
