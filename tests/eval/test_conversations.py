"""The conversation suites on the tiny model: every turn of every system is judged, with a per-turn drift series."""

import pytest

from charlit.eval import benchmark_data
from charlit.eval.generation_cache import GenerationCache
from charlit.eval.judges import build_judge
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.suites import SUITES
from charlit.eval.suites.base import SuiteContext
from charlit.eval.suites.multiturn import long_conversation
from charlit.eval.systems import System
from charlit.models.tiny import tiny_model
from charlit.sampling import SamplingParams


def _ctx(tokenizer, pirate, sizes):
    base = tiny_model(len(tokenizer), seed=2).eval()
    bare = System("bare", base, "tiny-2", None)
    systems = [bare, System("prompted", base, "tiny-2", pirate.system_prompt())]
    cache = GenerationCache(SharedPrefixSampler(tokenizer, 8), SamplingParams(max_new_tokens=3), None)
    judges = {"likelihood": build_judge("likelihood", base_model=base, tokenizer=tokenizer, batch_size=8)}
    return SuiteContext(tokenizer, pirate, systems, bare, cache, judges, sizes, seed=1)


def test_long_conversations_have_at_least_ten_turns():
    assert len(benchmark_data.long_conversations()) >= 3
    assert all(len(c) >= 10 for c in benchmark_data.long_conversations())


def test_the_long_conversation_suite_judges_every_turn_and_keeps_the_history(tokenizer, pirate):
    ctx = _ctx(tokenizer, pirate, {"long_conversations": 1, "long_turns": 10})
    result = long_conversation(ctx)
    assert SUITES.get("long_conversation") is long_conversation
    series = result.series["likelihood"]
    assert set(series) == {"bare", "prompted"} and len(series["bare"]) == 10
    assert all(estimate.n == 1 for estimate in series["prompted"])  # one conversation: one reply per turn
    assert result.metrics["likelihood_last_turn"]["bare"].mean == pytest.approx(series["bare"][-1].mean)
    conversation = result.samples[0]["conversation"]
    assert [m["role"] for m in conversation] == ["user", "assistant"] * 10
    assert [m["content"] for m in conversation[::2]] == benchmark_data.long_conversations()[0][:10]


def test_sizes_beyond_the_bundled_conversations_are_refused(tokenizer, pirate):
    with pytest.raises(ValueError, match=r"suite.long_conversations=9 / suite.long_turns=10: choose 1..3"):
        long_conversation(_ctx(tokenizer, pirate, {"long_conversations": 9, "long_turns": 10}))
