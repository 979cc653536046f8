"""Revealed preferences and coherence with a stub LLM judge (the plumbing; no network)."""

import pytest

from charlit.eval.generation_cache import GenerationCache
from charlit.eval.judges.llm import SKIPPED, LLMJudge
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.stats import bradley_terry_elo
from charlit.eval.suites.base import SuiteContext
from charlit.eval.suites.llm_judged import coherence, revealed_preferences, trait_pairs
from charlit.eval.systems import System
from charlit.models.tiny import tiny_model
from charlit.sampling import SamplingParams

SIZES = {"revealed_pairs": 10, "id_prompts": 3}


def _ctx(tokenizer, pirate, judge):
    model = tiny_model(len(tokenizer), seed=2).eval()
    bare = System("bare", model, "tiny-2", None)
    systems = [bare, System("prompted", model, "tiny-2", pirate.system_prompt())]
    cache = GenerationCache(SharedPrefixSampler(tokenizer, 8), SamplingParams(max_new_tokens=4), None)
    return SuiteContext(tokenizer, pirate, systems, bare, cache, {}, SIZES, seed=3, llm_judge=judge)


def test_llm_suites_skip_without_a_judge(tokenizer, pirate):
    ctx = _ctx(tokenizer, pirate, None)
    assert revealed_preferences(ctx).status == SKIPPED and not revealed_preferences(ctx).metrics
    assert coherence(ctx).status == SKIPPED


def test_revealed_preferences_fit_bradley_terry_on_the_judged_choices(tokenizer, pirate):
    ctx = _ctx(tokenizer, pirate, LLMJudge(lambda prompt: "1", "always the first trait"))
    result = revealed_preferences(ctx)
    pairs = trait_pairs(12, 10, seed=3)
    want = bradley_terry_elo(pairs, 12, seed=3)  # the first-listed trait wins every pair
    got = result.metrics
    assert len(got) == 24 and all(f"{m}_gated" in got for m in list(got) if not m.endswith("_gated"))
    for k, name in enumerate(
        [
            "nautical",
            "stoic",
            "poetic",
            "sarcastic",
            "mathematical",
            "warm",
            "formal",
            "playful",
            "blunt",
            "cautious",
            "enthusiastic",
            "humble",
        ]
    ):
        assert got[f"elo_{name}"]["prompted"] == want[k]
    assert coherence(_ctx(tokenizer, pirate, LLMJudge(lambda p: "8", "stub"))).metrics["coherence"][
        "bare"
    ].mean == pytest.approx(0.8)
