"""Conversations: each system holds its own multi-turn conversation and every turn is judged, so the per-turn series
(plotted as a drift curve) shows whether the persona fades as the conversation grows. ``multiturn`` runs the bundled
6-turn conversations, ``long_conversation`` the 12-turn ones (``suite.long_conversations``, ``suite.long_turns``)."""

from __future__ import annotations

from charlit.eval import benchmark_data
from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult, estimates, persona_values


@SUITES.register("multiturn")
def multiturn(ctx: SuiteContext) -> SuiteResult:
    convs = [c[: int(ctx.sizes["turns"])] for c in benchmark_data.conversations()[: int(ctx.sizes["conversations"])]]
    return drift(ctx, convs, 200)


@SUITES.register("long_conversation")
def long_conversation(ctx: SuiteContext) -> SuiteResult:
    bundled = benchmark_data.long_conversations()
    count, turns = int(ctx.sizes.get("long_conversations", 0)), int(ctx.sizes.get("long_turns", 0))
    if not 0 < count <= len(bundled) or not 0 < turns <= min(len(c) for c in bundled):
        raise ValueError(
            f"suite.long_conversations={count} / suite.long_turns={turns}: choose 1..{len(bundled)} conversations "
            f"of 1..{min(len(c) for c in bundled)} turns."
        )
    return drift(ctx, [c[:turns] for c in bundled[:count]], 400)


def drift(ctx: SuiteContext, convs: list[list[str]], seed_offset: int) -> SuiteResult:
    """Every system talks through ``convs`` (user turns), each turn judged; per-turn series and first/last/all."""
    turns = min(len(c) for c in convs)
    result = SuiteResult()
    floors = [{} for _ in range(turns)]  # the bare base's mean per turn, for the gated scores
    for system in ctx.systems:
        histories: list[list[dict]] = [[] for _ in convs]
        per_turn: list[dict[str, list]] = []
        for t in range(turns):
            for history, conv in zip(histories, convs):
                history.append({"role": "user", "content": conv[t]})
            replies = ctx.replies(system, [list(h) for h in histories], seed_offset + t, f"conversation turn {t + 1}")
            for history, reply in zip(histories, replies):
                history.append({"role": "assistant", "content": reply.text})
            per_turn.append(persona_values(ctx, system, replies, floors[t]))
        series = [estimates(scores) for scores in per_turn]
        for metric in series[0]:
            result.series.setdefault(metric, {})[system.label] = [s[metric] for s in series]
            result.put(f"{metric}_first_turn", system.label, series[0][metric])
            result.put(f"{metric}_last_turn", system.label, series[-1][metric])
        pooled = {metric: [x for scores in per_turn for x in scores[metric]] for metric in per_turn[0]}
        for metric, estimate in estimates(pooled, "").items():
            result.put(f"{metric}_all_turns", system.label, estimate)
        result.samples.append({"system": system.label, "conversation": histories[0]})
    return result
