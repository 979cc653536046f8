"""The fused Llama decoding forward: the float64 model's logits at every step, generate's greedy tokens, LoRA
merged without touching the model, bf16 products, and a fallback for architectures it does not reproduce."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from charlit.models.tiny import tiny_model
from charlit.sampling import decode
from charlit.sampling.base import SamplingParams
from charlit.sampling.fused_llama import FusedLlama, calibrate, choose, packing_available, supports
from charlit.sampling.hf import HFSampler
from tests.sampling.helpers import PAD, VOCAB, left_padded, lora_model

PROMPTS = [[5, 17, 33, 2, 9], [8, 1], [44, 45, 46]]


def _reference_logits(model, ids, mask) -> torch.Tensor:
    """Last-position logits of a float64 copy of ``model`` over the whole sequence, no cache."""
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return exact(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]


@pytest.mark.parametrize("bias", [False, True])
def test_every_steps_logits_match_the_float64_model(bias):
    model = get_peft_model(tiny_model(VOCAB, seed=3, attention_bias=bias), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or (bias and name.endswith("bias")):
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    ids, mask = left_padded(PROMPTS)
    forward = FusedLlama(model).kv_forward(ids.shape[1] + 4)
    slots = torch.zeros((3, ids.shape[1] + 4), dtype=torch.long)
    slots[:, : ids.shape[1]] = mask
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    logits = forward(ids, slots, positions, 0)
    for step in range(4):
        expected = _reference_logits(model, ids, mask)
        assert torch.allclose(logits.double(), expected, atol=1e-5), (step, (logits.double() - expected).abs().max())
        token = expected.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        slots[:, ids.shape[1] - 1] = 1
        positions = positions[:, -1:] + 1
        logits = forward(token, slots, positions, ids.shape[1] - 1)


def test_greedy_tokens_match_generate_and_the_model_is_untouched():
    model = lora_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = left_padded(PROMPTS)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    fused = decode.sample(FusedLlama(model), ids, mask, params, [VOCAB], PAD)
    assert fused.tolist() == decode.sample(model, ids, mask, params, [VOCAB], PAD).tolist()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with model.disable_adapter():  # the adapter is in the decoder's weights: without it the logits differ
        base_only = FusedLlama(model)
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    with_lora = FusedLlama(model).kv_forward(ids.shape[1])(ids, mask, positions, 0)
    assert not torch.allclose(with_lora, base_only.kv_forward(ids.shape[1])(ids, mask, positions, 0), atol=1e-3)


def test_one_copy_serves_calls_while_the_base_weights_stay_and_merges_the_adapter_each_call():
    model = lora_model()
    sampler = HFSampler(None, precision="fp32")
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    with sampler.decoder(model) as first:
        before = first.kv_forward(ids.shape[1])(ids, mask, positions, 0)
    with torch.no_grad():  # an optimizer step on the adapter: the same copy, the new adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    with sampler.decoder(model) as second:
        after = second.kv_forward(ids.shape[1])(ids, mask, positions, 0)
    assert second is first and not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after.double(), _reference_logits(model, ids, mask), atol=1e-5)
    with torch.no_grad():  # a changed base weight: a fresh copy
        model.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight.mul_(1.5)
    assert not first.current()
    with sampler.decoder(model) as third:
        assert third is not first and third.current()
        got = third.kv_forward(ids.shape[1])(ids, mask, positions, 0)
    assert torch.allclose(got.double(), _reference_logits(model, ids, mask), atol=1e-5)


def test_bf16_products_stay_close_to_fp32():
    model = lora_model()
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    fp32 = FusedLlama(model).kv_forward(ids.shape[1])(ids, mask, positions, 0)
    bf16_decoder = FusedLlama(model, dtype=torch.bfloat16)
    assert bf16_decoder.layers[0].qkv.weight.dtype == torch.bfloat16
    bf16 = bf16_decoder.kv_forward(ids.shape[1])(ids, mask, positions, 0)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.05 * fp32.abs().max().item())


def test_other_architectures_are_not_claimed():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    assert supports(lora_model()) and not supports(gpt2)
    assert not supports(tiny_model(VOCAB, hidden_act="gelu"))
    dora = get_peft_model(tiny_model(VOCAB), LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    assert not supports(dora)  # its weights are not W + BA: it decodes through the model itself
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        FusedLlama(gpt2)


def test_auto_precision_times_whole_decoding_steps_and_caches(tmp_path, monkeypatch):
    model = lora_model()
    path = tmp_path / "calibration.json"
    choice, record = calibrate(model, path=path)
    names = {"fp32", "bf16"} | ({"fp32-packed", "bf16-packed"} if packing_available() else set())
    assert choice in names and set(record["seconds"]) == names and not record["cached"]
    assert calibrate(model, path=path) == (choice, {**record, "cached": True})
    measured = {"choice": "bf16-packed", "seconds": {"fp32": 4.0, "bf16": 2.0, "fp32-packed": 3.9, "bf16-packed": 1.0}}
    monkeypatch.setattr(
        "charlit.sampling.fused_llama.calibrate", lambda m, linear, path=None: ("bf16-packed", measured)
    )
    monkeypatch.setattr("charlit.sampling.precision.calibrate", lambda m, path=None: ("fp32", {}))
    sampler = HFSampler(None, precision="auto")
    assert sampler.decoding_precision(model) == "bf16"  # the fused forward's own timing decides, not the products'
    with sampler.decoder(model) as decoder:
        assert decoder.dtype == torch.bfloat16 and decoder.packed == packing_available()
    with HFSampler(None, precision="fp32").decoder(model) as decoder:  # 3.9 s is not 5 % under 4.0 s
        assert decoder.dtype == torch.float32 and not decoder.packed


def test_choose_reads_a_forced_precision_from_the_record():
    record = {"choice": "fp32", "seconds": {"fp32": 1.0, "bf16": 1.2, "fp32-packed": 0.9, "bf16-packed": 1.3}}
    assert choose(record) == ("fp32", False)
    assert choose(record, "fp32") == ("fp32", True) and choose(record, "bf16") == ("bf16", False)
    assert choose({"choice": "bf16", "seconds": {"fp32": 1.0, "bf16": 0.5}}, "bf16") == ("bf16", False)
    for bad in (
        {"seconds": {"fp32": "1.0", "fp32-packed": 0.5}},
        {"seconds": [1, 2]},
        {"seconds": {"fp32": 1.0, "fp32-packed": -1}},
    ):
        assert choose({"choice": "fp32", **bad}, "fp32") == ("fp32", False)  # a foreign cache entry: plain weights


@pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN prepacked linear")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_plain_products_logits(dtype):
    model = get_peft_model(tiny_model(VOCAB, seed=5, attention_bias=True), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.endswith("bias"):
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    plain = FusedLlama(model, dtype).kv_forward(ids.shape[1])(ids, mask, positions, 0)
    packed_decoder = FusedLlama(model, dtype, packed=True)
    assert packed_decoder.layers[0].qkv.weight.is_mkldnn
    packed = packed_decoder.kv_forward(ids.shape[1])(ids, mask, positions, 0)
    expected = _reference_logits(model, ids, mask)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05 * expected.abs().max().item()
    assert torch.allclose(packed.double(), expected, atol=tolerance)
    assert torch.allclose(packed, plain, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_two_active_adapters_are_both_merged():
    model = lora_model()
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    model.base_model.set_adapter(["default", "second"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.second" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    logits = FusedLlama(model).kv_forward(ids.shape[1])(ids, mask, positions, 0)
    assert torch.allclose(logits.double(), _reference_logits(model, ids, mask), atol=1e-5)
