"""Compute accounting (charlit/compute.py): the FLOP rule against hand counts, the meter's phases and hooks, and
what a tiny run's summary.json reports."""

import csv
import json

import torch

from charlit.compute import ComputeMeter, MeteredSampler, flops_per_token, param_counts, sum_compute
from charlit.models.tiny import tiny_model
from charlit.run import train
from tests.conftest import compose

H, LAYERS, FFN, KV = 64, 2, 128, 32  # conf/model/tiny.yaml: hidden 64, 2 layers; intermediate 2·64; 2 of 4 heads (16)


def tiny_params(vocab: int) -> int:
    """The tiny Llama's parameters by hand: the tied embedding/lm_head once, per layer q, k, v, o, the gated MLP
    and two RMSNorms, then the final norm."""
    per_layer = H * H + 2 * H * KV + H * H + 3 * H * FFN + 2 * H
    return vocab * H + LAYERS * per_layer + H


def tiny_lora_params(r: int) -> int:
    """LoRA on every linear layer of the blocks (A: r·in, B: out·r), the lm_head excluded."""
    shapes = [(H, H), (H, KV), (H, KV), (H, H), (H, FFN), (H, FFN), (FFN, H)]
    return LAYERS * sum(r * (i + o) for i, o in shapes)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_flop_rule_by_hand():
    assert flops_per_token(1000) == 2000  # forward
    assert flops_per_token(1000, 1000, trained=True) == 6000  # full fine-tuning: 2N fwd + 2N act-grad + 2N weight-grad
    assert flops_per_token(1000, 10, trained=True) == 4020  # LoRA: 2N fwd + 2N act-grad + 2·N_lora weight-grad
    assert flops_per_token(1000, 10, trained=True, recompute=True) == 6020  # gradient checkpointing: one more forward


def test_param_counts_count_a_tied_matrix_once_and_find_the_adapters():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed.weight  # tied
    model.proj = torch.nn.Linear(4, 4).requires_grad_(False)  # 16 + 4
    model.lora_A = torch.nn.Linear(4, 2, bias=False)  # 8, trainable
    assert param_counts(model) == (40 + 20 + 8, 40 + 8, 8)
    assert param_counts(tiny_model(50))[0] == tiny_params(50)


def test_phases_time_exclusively():
    clock = Clock()
    meter = ComputeMeter(clock=clock)
    with meter.phase("train"):
        clock.now = 1.0
        with meter.phase("sampling"):
            clock.now = 3.5
        clock.now = 4.0
    clock.now = 10.0  # no phase open: not counted
    with meter.phase("validation"):
        clock.now = 10.25
    seconds = {p: t.seconds for p, t in meter.phases.items()}
    assert seconds == {"data_generation": 0, "sampling": 2.5, "scoring": 0, "train": 1.5, "validation": 0.25}


def test_forward_hooks_count_unpadded_tokens_by_phase():
    model = tiny_model(50)
    n = tiny_params(50)
    meter = ComputeMeter(model)
    ids = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # 8 real tokens, 2 padding
    model(input_ids=ids, attention_mask=mask)  # no phase open: not counted
    with meter.phase("validation"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    with meter.phase("train"):
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()  # trained: 6N (full fine-tuning)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)  # a no-grad forward in a step: scoring
    phases = meter.phases
    assert (phases["validation"].tokens, phases["validation"].flops) == (8, 8 * 2 * n)
    assert (phases["train"].tokens, phases["train"].flops) == (8, 8 * 6 * n)
    assert (phases["scoring"].tokens, phases["scoring"].flops) == (8, 8 * 2 * n)
    assert meter.totals()["compute/flops"] == 8 * 8 * n and meter.totals()["compute/scored_tokens"] == 8


def test_lora_training_and_adapter_off_forwards():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(50), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    base, lora = tiny_params(50), tiny_lora_params(2)
    meter = ComputeMeter(model)
    assert (meter.n_params, meter.n_trainable) == (base + lora, lora)
    ids = torch.randint(0, 50, (1, 4))
    with meter.phase("train"):
        model(input_ids=ids).logits.sum().backward()
        with torch.no_grad(), model.disable_adapter():  # the frozen teacher / reference
            model(input_ids=ids)
    assert meter.phases["train"].flops == 4 * (4 * (base + lora) + 2 * lora)
    assert meter.phases["scoring"].flops == 4 * 2 * base


class FakeSampler:
    def __init__(self, model):
        self.model = model

    def generate(self, model, prompts, params, *, seed=None, desc=None):
        self.model(input_ids=torch.tensor([prompts[0]]))  # a decoding loop's forwards: counted by the wrapper instead
        return [[7] * 3 for _ in prompts]


def test_metered_sampler_counts_prompts_and_samples_once():
    model = tiny_model(50)
    n = tiny_params(50)
    meter = ComputeMeter(model)
    sampler = MeteredSampler(FakeSampler(model), meter)
    with meter.phase("train"), torch.no_grad():
        assert sampler.generate(model, [[1, 2], [3, 4, 5, 6]], None) == [[7] * 3] * 2
    with meter.phase("validation"), torch.no_grad():
        sampler.generate(model, [[1, 2]], None)
    assert (meter.phases["sampling"].tokens, meter.phases["sampling"].flops) == (12, 12 * 2 * n)
    assert meter.phases["validation"].tokens == 5 and meter.phases["scoring"].tokens == 0
    assert meter.sampled_tokens == 6 and meter.totals()["compute/generated_tokens"] == 6


def test_data_cost_state_and_reduction():
    meter = ComputeMeter()
    meter.add_data(
        {
            "pairs": {"new_tokens": 100, "seconds": 2.0, "flops": 5e9},
            "prompts": {"new_tokens": 10, "seconds": 1.0},  # a card from before FLOPs were counted
        }
    )
    meter.phases["train"].flops, meter.phases["train"].seconds, meter.trained_tokens = 1e9, 3.0, 40
    totals = meter.totals()
    assert totals["compute/flops"] == 6e9 and totals["compute/generated_tokens"] == 110
    assert meter.summary()["data_stages"]["prompts"]["flops"] is None

    copy = ComputeMeter()
    copy.load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert copy.totals() == totals

    both = meter.reduced(lambda values: [2 * v for v in values], world_size=2)  # two identical processes
    assert both.phases["train"].flops == 2e9 and both.phases["train"].seconds == 3.0 and both.trained_tokens == 80
    assert both.totals()["compute/flops"] == 7e9  # the dataset is generated once


def test_sum_compute_adds_recipe_stages():
    a, b = ComputeMeter(), ComputeMeter()
    a.add_data({"pairs": {"new_tokens": 10, "seconds": 1.0, "flops": 100.0}})
    b.phases["train"].flops, b.trained_tokens = 50.0, 4
    total = sum_compute({"dpo": a.summary(), "sft": b.summary(), "old": {}})
    assert total["flops"] == 150.0 and total["generated_tokens"] == 10 and total["trained_tokens"] == 4
    assert total["phases"]["data_generation"]["flops"] == 100.0 and list(total["data_stages"]) == ["dpo/pairs"]


FAST = ["model=tiny", "logger=csv", "sampler.max_new_tokens=6", "data.val_size=2", "data.batch_size=2"]


def test_tiny_run_reports_flops_that_match_a_hand_count(tmp_path, tokenizer):
    """self_distill with LoRA r=4, one step: sampling and the student's step run base + adapters, the frozen teacher
    the base alone; the summary's FLOPs per phase are the rule applied to N counted by hand."""
    overrides = [*FAST, "method=self_distill", "model.lora.r=4", "trainer.max_steps=1", "val.every_n_steps=1"]
    summary = train(compose([*overrides, "output.checkpoint_every_n_steps=1"]), tmp_path / "a")
    base, lora = tiny_params(len(tokenizer)), tiny_lora_params(4)
    compute, metrics = summary["compute"], summary["metrics"]
    assert (compute["n_params"], compute["n_trainable"]) == (base + lora, lora)
    phases = compute["phases"]
    assert phases["sampling"]["flops"] == 2 * (base + lora) * phases["sampling"]["tokens"] > 0
    assert phases["scoring"]["flops"] == 2 * base * phases["scoring"]["tokens"] > 0
    assert phases["train"]["flops"] == (4 * (base + lora) + 2 * lora) * phases["train"]["tokens"] > 0
    assert (
        compute["flops"]
        == metrics["compute/flops"]
        == sum(phases[p]["flops"] for p in ("sampling", "scoring", "train"))
    )
    # the student trains on every token it sampled; each forward ran its context too
    assert (
        compute["trained_tokens"] == compute["sampled_tokens"] == metrics["train/tokens"] == compute["generated_tokens"]
    )
    assert (
        phases["train"]["tokens"] > compute["trained_tokens"]
        and phases["scoring"]["tokens"] > compute["trained_tokens"]
    )
    assert all(phases[p]["seconds"] > 0 for p in ("sampling", "scoring", "train", "validation"))
    # learning curves on a compute axis: every validation row and the CSV carry the running totals
    rows = summary["val_history"]
    assert [r["compute/flops"] for r in rows] == [0.0, compute["flops"]] and "val/persona_progress" in rows[-1]
    with open(tmp_path / "a" / "csv" / "metrics.csv") as fh:
        assert any(r.get("compute/flops") and r.get("val/divergence") for r in csv.DictReader(fh))
    # a resumed run restores the counters from its checkpoint
    (tmp_path / "a" / "summary.json").unlink()
    resumed = train(compose([*overrides, "output.checkpoint_every_n_steps=1"]), tmp_path / "b")
    assert resumed["paths"]["run_dir"] == str(tmp_path / "a")
    assert resumed["compute"]["flops"] == compute["flops"]
    assert resumed["compute"]["trained_tokens"] == compute["trained_tokens"]


def test_generated_data_counts_in_the_run(tmp_path):
    cfg = compose(
        [
            *FAST,
            "method=dpo",
            "data=pairs",
            "data.generate.prompts.num=4",
            "generation.max_new_tokens=4",
            f"generation.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=1",
            "val.every_n_steps=0",
        ]
    )
    compute = train(cfg, tmp_path / "run")["compute"]
    card = json.loads(next((tmp_path / "cache").glob("pairs/*/card.json")).read_text())["generation"]
    assert list(compute["data_stages"]) == ["pairs"] and card["flops"] > 0
    assert compute["data_stages"]["pairs"]["flops"] == card["flops"] == compute["phases"]["data_generation"]["flops"]
    assert compute["generated_tokens"] == card["new_tokens"] > 0 and compute["sampled_tokens"] == 0
    assert compute["flops"] > card["flops"] + compute["phases"]["train"]["flops"] > card["flops"]
