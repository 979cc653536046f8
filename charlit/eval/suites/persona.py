"""Persona strength on held-out prompts: in distribution (the training kind) and out of distribution
(code, maths, structured practical advice, role requests)."""

from __future__ import annotations

from charlit.eval import benchmark_data
from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult, estimates, persona_values, put_ranges, samples


def _persona_suite(ctx: SuiteContext, prompts: list[str], seed_offset: int, desc: str) -> SuiteResult:
    result, floors, values = SuiteResult(), {}, {}
    for system in ctx.systems:
        replies = ctx.replies(system, prompts, seed_offset, desc)
        values[system.label] = persona_values(ctx, system, replies, floors)
        for metric, estimate in estimates(values[system.label]).items():
            result.put(metric, system.label, estimate)
        result.samples += samples(system.label, replies, 3)
    put_ranges(result, values, ctx.bare.label)
    return result


@SUITES.register("persona_id")
def persona_id(ctx: SuiteContext) -> SuiteResult:
    return _persona_suite(
        ctx, benchmark_data.persona_id_prompts()[: int(ctx.sizes["id_prompts"])], 0, "in-distribution"
    )


@SUITES.register("ood")
def ood(ctx: SuiteContext) -> SuiteResult:
    rows = benchmark_data.ood_prompts()[: int(ctx.sizes["ood_prompts"])]
    return _persona_suite(ctx, [r["prompt"] for r in rows], 100, "out-of-distribution")
