"""The format_shift suite on the tiny model: every system is judged, overall and per format, and the per-format
numbers are the means of that format's replies."""

import pytest

from charlit.eval import benchmark_data
from charlit.eval.generation_cache import GenerationCache
from charlit.eval.judges import build_judge
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.suites import SUITES
from charlit.eval.suites.base import SuiteContext, persona_values
from charlit.eval.suites.format_shift import format_shift, format_shift_rows
from charlit.eval.systems import System
from charlit.models.tiny import tiny_model
from charlit.sampling import SamplingParams

FORMATS = ["email", "json", "code", "commit", "table", "french", "spanish", "agentic"]
N = 16  # two rounds: two replies per format


@pytest.fixture(scope="module")
def run(tokenizer, pirate):
    base = tiny_model(len(tokenizer), seed=2).eval()
    trained = tiny_model(len(tokenizer), seed=3).eval()
    bare = System("bare", base, "tiny-2", None)
    systems = [
        bare,
        System("prompted", base, "tiny-2", pirate.system_prompt()),
        System("model", trained, "tiny-3", None),
    ]
    cache = GenerationCache(SharedPrefixSampler(tokenizer, 8), SamplingParams(max_new_tokens=4), None)
    judges = {"likelihood": build_judge("likelihood", base_model=base, tokenizer=tokenizer, batch_size=8)}
    ctx = SuiteContext(tokenizer, pirate, systems, bare, cache, judges, {"format_shift_prompts": N}, seed=3)
    return ctx, format_shift(ctx)


def test_format_shift_reports_every_system_overall_per_format_and_as_ranges(run):
    ctx, result = run
    assert SUITES.get("format_shift") is format_shift and result.status == "ok"
    per_format = [f"{m}_{f}" for m in ("likelihood", "likelihood_gated") for f in FORMATS]
    for metric in ["likelihood", "likelihood_gated", "coherent", "looping", "fluency", *per_format]:
        assert set(result.metrics[metric]) == {"bare", "prompted", "model"}, metric
    assert result.metrics["likelihood"]["model"].n == N
    assert set(result.metrics["likelihood_range"]) == set(result.metrics["likelihood_gated_range"]) == {"model"}
    assert [s["system"] for s in result.samples] == [label for label in ("bare", "prompted", "model") for _ in FORMATS]
    assert sum(s["prompt"].startswith("Tool result:") for s in result.samples) == 3  # one agentic sample per system


def test_per_format_estimates_are_the_means_of_that_formats_replies(run):
    ctx, result = run
    rows = benchmark_data.format_shift_prompts()[:N]
    prompts = [r["messages"] if "messages" in r else r["prompt"] for r in rows]
    floors = {}
    for system in ctx.systems:  # bare first, as the suite runs them
        replies = ctx.replies(system, prompts, 400, "recompute")
        raw = ctx.judges["likelihood"].score(replies, ctx.constitution)
        gated = persona_values(ctx, system, replies, floors)["likelihood_gated"]
        for fmt in FORMATS:
            rows_of = [i for i, r in enumerate(rows) if r["format"] == fmt]
            assert len(rows_of) == 2
            for metric, values in (("likelihood", raw), ("likelihood_gated", gated)):
                got = result.metrics[f"{metric}_{fmt}"][system.label]
                assert got.n == 2
                assert got.mean == pytest.approx(sum(values[i] for i in rows_of) / 2, abs=1e-6), (metric, fmt)
        assert result.metrics["likelihood"][system.label].mean == pytest.approx(sum(raw) / N, abs=1e-6)


def test_more_prompts_than_bundled_is_refused():
    bundled = len(benchmark_data.format_shift_prompts())
    assert len(format_shift_rows(bundled)) == bundled
    with pytest.raises(ValueError, match=f"suite.format_shift_prompts={bundled + 1} .* {bundled} bundled"):
        format_shift_rows(bundled + 1)
