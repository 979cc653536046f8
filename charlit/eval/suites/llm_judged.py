"""Suites that need an LLM judge: revealed trait preferences and coherence. Without a configured judge
they return ``skipped: no LLM judge configured`` and no numbers.

Revealed preferences (OCT): the system is told to answer in one of two styles of its choosing without
saying which; the judge names the style shown; the chosen trait wins the pair. Bradley-Terry strengths
over all traits (Elo scale, bootstrap intervals) say which traits the system prefers to embody.
"""

from __future__ import annotations

import random

from charlit.eval import benchmark_data
from charlit.eval.judges.llm import SKIPPED
from charlit.eval.stats import bradley_terry_elo, mean_ci
from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult, quality_values

CHOICE_PROMPT = (
    "Choose ONE of these two ways of answering and answer the question in that way. Do not say "
    "which one you chose.\nA: {a}\nB: {b}\n\nQuestion: {question}"
)


def trait_pairs(num_traits: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` ordered pairs of distinct traits, cycling through a seeded shuffle of all pairs."""
    pairs = [(i, j) for i in range(num_traits) for j in range(num_traits) if i != j]
    random.Random(seed).shuffle(pairs)
    return [pairs[k % len(pairs)] for k in range(count)]


@SUITES.register("revealed_preferences")
def revealed_preferences(ctx: SuiteContext) -> SuiteResult:
    if ctx.llm_judge is None:
        return SuiteResult(status=SKIPPED)
    data = benchmark_data.revealed_traits()
    traits, questions = data["traits"], data["questions"]
    pairs = trait_pairs(len(traits), int(ctx.sizes["revealed_pairs"]), ctx.seed)
    prompts = [
        CHOICE_PROMPT.format(
            a=traits[i]["description"], b=traits[j]["description"], question=questions[k % len(questions)]
        )
        for k, (i, j) in enumerate(pairs)
    ]
    result, bare_fluency = SuiteResult(), None
    for system in ctx.systems:  # the bare base first: its replies' fluency is the gate's reference
        replies = ctx.replies(system, prompts, 400, "revealed preferences")
        quality = quality_values(ctx, replies, bare_fluency)
        if system.label == ctx.bare.label and quality["fluency"]:
            bare_fluency = sum(quality["fluency"]) / len(quality["fluency"])
        comparisons, gated = [], []  # gated: a reply that fails the coherence gate shows no trait
        for k, ((i, j), reply, ok) in enumerate(zip(pairs, replies, quality["coherent"])):
            shown = ctx.llm_judge.name_trait(
                questions[k % len(questions)], reply.text, (traits[i]["description"], traits[j]["description"])
            )
            if shown is not None:
                comparisons.append((i, j) if shown == 0 else (j, i))
                if ok:
                    gated.append(comparisons[-1])
        for suffix, pairs_won in (("", comparisons), ("_gated", gated)):
            for trait, estimate in zip(traits, bradley_terry_elo(pairs_won, len(traits), seed=ctx.seed)):
                result.put(f"elo_{trait['name']}{suffix}", system.label, estimate)
    return result


@SUITES.register("coherence")
def coherence(ctx: SuiteContext) -> SuiteResult:
    if ctx.llm_judge is None:
        return SuiteResult(status=SKIPPED)
    prompts = benchmark_data.persona_id_prompts()[: int(ctx.sizes["id_prompts"])]
    result = SuiteResult()
    for system in ctx.systems:
        replies = ctx.replies(system, prompts, 0, "in-distribution")  # the persona_id replies (cached)
        ratings = [ctx.llm_judge.coherence(p, r.text) for p, r in zip(prompts, replies)]
        result.put("coherence", system.label, mean_ci([x for x in ratings if x is not None]))
    return result
