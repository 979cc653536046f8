"""What every suite receives (the systems, judges and sizes) and returns (metrics per system with intervals).

A suite is a function ``(SuiteContext) -> SuiteResult`` registered in :data:`SUITES` by any module of
:mod:`charlit.eval.suites` (third parties: the ``charlit.suites`` entry-point group); ``suite.suites`` lists
which run, in report order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from charlit.data.constitution import Constitution
from charlit.eval.generation_cache import GenerationCache
from charlit.eval.judges.base import PersonaJudge, Reply
from charlit.eval.judges.classifier import ClassifierJudge
from charlit.eval.judges.llm import LLMJudge
from charlit.eval.likelihood_judge import mean_reply_logprob
from charlit.eval.stats import LEVEL, Estimate, mean_ci, wilson
from charlit.eval.systems import System
from charlit.quality import QualityGate, gated_scores, reply_quality
from charlit.registry import Registry
from charlit.sampling.hf import end_token_ids

SUITES = Registry("eval suite", package="charlit.eval.suites", group="charlit.suites", option="suite.suites")


@dataclass
class SuiteContext:
    tokenizer: object
    constitution: Constitution
    systems: list[System]  # distinct systems to evaluate (label → model + system prompt)
    bare: System  # the bare base model: likelihood judge, KL reference, prefill writer
    cache: GenerationCache
    judges: dict[str, PersonaJudge]
    sizes: dict  # the suite's size settings (conf/suite/*.yaml)
    seed: int
    llm_judge: LLMJudge | None = None
    score_batch_size: int = 8
    gate: QualityGate = field(default_factory=QualityGate)

    def replies(self, system: System, prompts: list, seed_offset: int, desc: str) -> list[Reply]:
        ids = system.generate(self.cache, self.tokenizer, prompts, self.seed + seed_offset, desc=desc)
        return [
            Reply(p, tuple(r), self.tokenizer.decode(r, skip_special_tokens=True).strip()) for p, r in zip(prompts, ids)
        ]


@dataclass
class SuiteResult:
    status: str = "ok"  # "ok" or "skipped: <why>"
    metrics: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # metric -> system label -> estimate
    series: dict[str, dict[str, list[Estimate]]] = field(default_factory=dict)  # e.g. per-turn drift
    samples: list[dict] = field(default_factory=list)
    # metric -> system label -> one value per prompt (same prompts, same order for every label): what a study
    # pooling several runs needs to bootstrap a range over prompts and seeds (charlit.sweeps.study)
    per_prompt: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def put(self, metric: str, label: str, estimate: Estimate) -> None:
        self.metrics.setdefault(metric, {})[label] = estimate


def judge_scores(ctx: SuiteContext, replies: list[Reply]) -> dict[str, list]:
    """Every configured judge's per-reply scores (keyed by judge name), plus ``classifier_hit`` (whether the
    persona is the classifier's top class) when the classifier knows the persona."""
    out = {}
    for name, judge in ctx.judges.items():
        if isinstance(judge, ClassifierJudge):
            if not judge.knows(ctx.constitution):
                continue
            out["classifier_hit"] = judge.hits(replies, ctx.constitution)
        out[name] = judge.score(replies, ctx.constitution)
    return out


@torch.no_grad()
def fluency(ctx: SuiteContext, replies: list[Reply]) -> list[float | None]:
    """The bare base's mean per-token log-likelihood of each reply given the bare prompt (None for an empty reply)."""
    kept = [r for r in replies if r.ids]
    scores: list[float] = []
    for i in range(0, len(kept), ctx.score_batch_size):
        chunk = kept[i : i + ctx.score_batch_size]
        contexts = ctx.bare.contexts(ctx.tokenizer, [r.prompt for r in chunk])
        scores += mean_reply_logprob(ctx.bare.model, ctx.tokenizer, contexts, [list(r.ids) for r in chunk]).tolist()
    found = iter(scores)
    return [next(found) if r.ids else None for r in replies]


def quality_values(ctx: SuiteContext, replies: list[Reply], reference_fluency: float | None) -> dict[str, list]:
    """Per-reply text quality (:mod:`charlit.quality`): looping, distinct-2, compression ratio, recitation of the
    constitution, whether the reply ended (end-of-turn token) and passed the coherence gate, and its fluency under
    the bare base (``reference_fluency``: the bare base's own mean, for the gate; None = the mean of these)."""
    end_ids = end_token_ids(ctx.tokenizer, ctx.bare.model)
    source = ctx.constitution.system_prompt()
    fluent = fluency(ctx, replies)
    known = [f for f in fluent if f is not None]
    if reference_fluency is None and known:
        reference_fluency = sum(known) / len(known)
    quality = [
        reply_quality(r.ids, r.text, end_ids, ctx.gate, source, f, reference_fluency) for r, f in zip(replies, fluent)
    ]
    return {
        "looping": [q.loops for q in quality],
        "coherent": [q.coherent for q in quality],
        "ended": [q.ended for q in quality],
        "distinct_2": [q.distinct_2 for q in quality],
        "compression": [q.compression for q in quality],
        "recitation": [q.recitation for q in quality],
        "fluency": known,
    }


def persona_values(
    ctx: SuiteContext, system: System, replies: list[Reply], floors: dict[str, float]
) -> dict[str, list]:
    """Judge scores, their coherence-gated twins (``<judge>_gated``) and text quality for one system's replies.

    A reply that fails the gate scores the bare base's mean on the same prompts (no gain) in the gated twin, for
    every system alike; the bare base, the anchor, keeps its raw scores. ``floors`` carries the bare base's means
    (and its replies' mean fluency, which the gate compares with) from its call (systems run bare first) to the
    others'.
    """
    bare = system.label == ctx.bare.label
    if not bare and "fluency" not in floors:
        raise ValueError(
            f"suite ran {system.label!r} before the bare base: the gated scores need the bare base's means first "
            f"(SuiteContext.systems must start with the bare system)."
        )
    values = judge_scores(ctx, replies)
    quality = quality_values(ctx, replies, None if bare else floors["fluency"])
    coherent = quality["coherent"]
    if bare:
        floors["fluency"] = sum(quality["fluency"]) / len(quality["fluency"]) if quality["fluency"] else None
    for judge in list(values):
        raw = values[judge]
        if bare:
            floors[judge] = sum(raw) / len(raw) if raw else 0.0
            values[f"{judge}_gated"] = list(raw)
        elif judge.endswith("_hit"):
            values[f"{judge}_gated"] = [bool(h) and ok for h, ok in zip(raw, coherent)]
        else:
            values[f"{judge}_gated"] = gated_scores(raw, coherent, floors[judge])
    return values | quality


def estimates(scores: dict[str, list], prefix: str = "") -> dict[str, Estimate]:
    """Means with t intervals; proportions (lists of booleans) with Wilson intervals."""
    out = {}
    for key, values in scores.items():
        proportion = bool(values) and all(isinstance(v, bool) for v in values)
        out[f"{prefix}{key}"] = wilson(sum(values), len(values)) if proportion else mean_ci(values)
    return out


def range_covered(
    system: list[float], bare: list[float], prompted: list[float], n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """The share of the bare→prompted gap a system's mean covers, ``(m − b) / (p − b)`` (0 = bare, 1 = prompted),
    with a percentile interval from a paired bootstrap over prompts (the three lists score the same prompts in the
    same order); resamples whose gap is 0 are left out."""
    if not (len(system) == len(bare) == len(prompted)) or not system:
        raise ValueError(
            f"range_covered needs one score per prompt from each system, got {len(system)}, {len(bare)} and "
            f"{len(prompted)} scores."
        )
    scores = np.array([system, bare, prompted], dtype=float)
    m, b, p = scores.mean(axis=1)
    point = (m - b) / (p - b) if p != b else float("nan")
    rng = np.random.default_rng(seed)
    means = scores[:, rng.integers(0, scores.shape[1], (n_boot, scores.shape[1]))].mean(axis=2)
    gap = means[2] - means[1]
    draws = (means[0] - means[1])[gap != 0] / gap[gap != 0]
    if not len(draws):
        return Estimate(point, float("nan"), float("nan"), scores.shape[1])
    lo, hi = np.quantile(draws, [0.5 - LEVEL / 2, 0.5 + LEVEL / 2])
    return Estimate(float(point), float(lo), float(hi), scores.shape[1])


def put_ranges(result: SuiteResult, values: dict[str, dict[str, list]], bare: str, prefix: str = "") -> None:
    """``<judge>_range`` and ``<judge>_gated_range`` of every system other than the bare and prompted base, from
    the per-prompt values :func:`persona_values` returned for each system label (nothing without both bases)."""
    if bare not in values or "prompted" not in values:
        return
    for label, own in values.items():
        for judge in [k for k in own if f"{k}_gated" in own and not k.endswith("_hit")]:
            for key in (judge, f"{judge}_gated"):
                result.per_prompt.setdefault(f"{prefix}{key}", {})[label] = [float(v) for v in own[key]]
        result.per_prompt.setdefault(f"{prefix}looping", {})[label] = [float(v) for v in own["looping"]]
    for label, own in values.items():
        if label in (bare, "prompted"):
            continue
        for judge in [k for k in own if f"{k}_gated" in own and not k.endswith("_hit")]:
            for key in (judge, f"{judge}_gated"):
                result.put(
                    f"{prefix}{key}_range", label, range_covered(own[key], values[bare][key], values["prompted"][key])
                )


def samples(label: str, replies: list[Reply], limit: int) -> list[dict]:
    return [
        {"system": label, "prompt": r.prompt if isinstance(r.prompt, str) else r.prompt[-1]["content"], "reply": r.text}
        for r in replies[:limit]
    ]
