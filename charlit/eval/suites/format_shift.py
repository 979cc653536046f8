"""Format shift: does the persona hold where no training prompt reached? The system writes something other
than a chat answer (an email or letter, a JSON object or tool-call arguments, commented code, a commit message,
a table or bullet summary, a reply in French or Spanish) or the next turn of an agentic transcript after a tool
result. Every reply is judged like the other persona suites; the likelihood judge's scores are also reported per
format (``likelihood_<format>``, ``likelihood_gated_<format>``)."""

from __future__ import annotations

from charlit.eval import benchmark_data
from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult, estimates, persona_values, put_ranges, samples

PER_FORMAT = ("likelihood", "likelihood_gated")  # the per-reply values also estimated per format


def format_shift_rows(n: int) -> list[dict]:
    """The first ``n`` bundled rows (round-robin by format); a clear error when ``n`` exceeds them."""
    rows = benchmark_data.format_shift_prompts()
    if not 0 < n <= len(rows):
        raise ValueError(f"suite.format_shift_prompts={n} must be between 1 and the {len(rows)} bundled prompts.")
    return rows[:n]


def per_format(values: dict[str, list], formats: list[str], prefix: str = "") -> dict[str, list]:
    """``<metric>_<format>``: the per-reply values of each :data:`PER_FORMAT` metric, split by the rows' format."""
    out = {}
    for metric in [m for m in PER_FORMAT if m in values]:
        for fmt in dict.fromkeys(formats):
            out[f"{prefix}{metric}_{fmt}"] = [v for v, f in zip(values[metric], formats) if f == fmt]
    return out


@SUITES.register("format_shift")
def format_shift(ctx: SuiteContext) -> SuiteResult:
    rows = format_shift_rows(int(ctx.sizes["format_shift_prompts"]))
    prompts = [r["messages"] if "messages" in r else r["prompt"] for r in rows]
    formats = [r["format"] for r in rows]
    firsts = [formats.index(f) for f in dict.fromkeys(formats)]  # one sample reply per format
    result, floors, values = SuiteResult(), {}, {}
    for system in ctx.systems:
        replies = ctx.replies(system, prompts, 400, "format shift")
        own = values[system.label] = persona_values(ctx, system, replies, floors)
        for metric, estimate in (estimates(own) | estimates(per_format(own, formats))).items():
            result.put(metric, system.label, estimate)
        result.samples += samples(system.label, [replies[i] for i in firsts], len(firsts))
    put_ranges(result, values, ctx.bare.label)
    return result
