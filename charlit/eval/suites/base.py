"""What every suite receives (the systems, judges and sizes) and returns (metrics per system with intervals).

A suite is a function ``(SuiteContext) -> SuiteResult`` registered in :data:`SUITES` by any module of
:mod:`charlit.eval.suites` (third parties: the ``charlit.suites`` entry-point group); ``suite.suites`` lists
which run, in report order."""
from __future__ import annotations

from dataclasses import dataclass, field

from charlit.data.constitution import Constitution
from charlit.eval.generation_cache import GenerationCache
from charlit.eval.judges.base import PersonaJudge, Reply
from charlit.eval.judges.classifier import ClassifierJudge
from charlit.eval.judges.llm import LLMJudge
from charlit.eval.stats import Estimate, mean_ci, wilson
from charlit.eval.systems import System
from charlit.registry import Registry

SUITES = Registry("eval suite", package="charlit.eval.suites", group="charlit.suites", option="suite.suites")


@dataclass
class SuiteContext:
    tokenizer: object
    constitution: Constitution
    systems: list[System]               # distinct systems to evaluate (label → model + system prompt)
    bare: System                        # the bare base model: likelihood judge, KL reference, prefill writer
    cache: GenerationCache
    judges: dict[str, PersonaJudge]
    sizes: dict                         # the suite's size settings (conf/suite/*.yaml)
    seed: int
    llm_judge: LLMJudge | None = None
    score_batch_size: int = 8

    def replies(self, system: System, prompts: list, seed_offset: int, desc: str) -> list[Reply]:
        ids = system.generate(self.cache, self.tokenizer, prompts, self.seed + seed_offset, desc=desc)
        return [Reply(p, tuple(r), self.tokenizer.decode(r, skip_special_tokens=True).strip()) for p, r in zip(prompts, ids)]


@dataclass
class SuiteResult:
    status: str = "ok"                                                  # "ok" or "skipped: <why>"
    metrics: dict[str, dict[str, Estimate]] = field(default_factory=dict)        # metric -> system label -> estimate
    series: dict[str, dict[str, list[Estimate]]] = field(default_factory=dict)   # e.g. per-turn drift
    samples: list[dict] = field(default_factory=list)

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


def estimates(scores: dict[str, list], prefix: str = "") -> dict[str, Estimate]:
    """Means with t intervals; hit rates (booleans) with Wilson intervals."""
    return {f"{prefix}{k}": wilson(sum(v), len(v)) if k.endswith("_hit") else mean_ci(v) for k, v in scores.items()}


def judge_estimates(ctx: SuiteContext, replies: list[Reply], prefix: str = "") -> dict[str, Estimate]:
    return estimates(judge_scores(ctx, replies), prefix)


def samples(label: str, replies: list[Reply], limit: int) -> list[dict]:
    return [{"system": label, "prompt": r.prompt if isinstance(r.prompt, str) else r.prompt[-1]["content"], "reply": r.text}
            for r in replies[:limit]]
