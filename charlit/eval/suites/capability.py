"""Capability retention: does the system still behave like the base model where the persona should not matter?

* ``kl_to_base``: on neutral prompts, the system samples replies; per reply token, the reverse KL
  ``KL(system ‖ bare base)`` over the full vocabulary (fused kernel, from hidden states), averaged per reply;
* ``perplexity``: the bundled neutral paragraphs as the assistant's reply to a fixed request, ``exp`` of
  the mean per-token negative log-likelihood (the interval is ``exp`` of the per-paragraph t interval);
* ``mc_accuracy``: the bundled multiple-choice items, each option scored by its mean per-token
  log-likelihood as the reply to the question; the best-scoring option is the answer (Wilson interval).
"""

from __future__ import annotations

import math

import torch

from charlit.eval import benchmark_data
from charlit.eval.likelihood_judge import mean_reply_logprob
from charlit.eval.stats import Estimate, mean_ci, wilson
from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult
from charlit.eval.systems import System
from charlit.kernels import fused_linear_divergence
from charlit.models.heads import lm_head
from charlit.models.sequences import response_hidden

PARAGRAPH_REQUEST = "Write a short paragraph of plain, informative text."
MC_TEMPLATE = "{question}\nAnswer with the correct option only."


@torch.no_grad()
def reply_kl(system: System, base: System, tokenizer, prompts: list, replies: list[list[int]]) -> list[float]:
    """Mean per-token ``KL(system ‖ base)`` of each reply, the system reading its own context, the base the bare
    prompt."""
    keep = [i for i, r in enumerate(replies) if r]
    out = [0.0] * len(replies)
    if not keep:
        return out
    chosen = [replies[i] for i in keep]
    student = response_hidden(
        system.model, system.contexts(tokenizer, [prompts[i] for i in keep]), chosen, tokenizer.pad_token_id
    )
    teacher = response_hidden(
        base.model, base.contexts(tokenizer, [prompts[i] for i in keep]), chosen, tokenizer.pad_token_id
    )
    s_head, t_head = lm_head(system.model), lm_head(base.model)
    per_token = fused_linear_divergence(
        student,
        s_head.weight,
        teacher,
        t_head.weight,
        beta=1.0,
        reduction="none",
        student_bias=s_head.bias,
        teacher_bias=t_head.bias,
        softcap=s_head.softcap,
    )
    lengths = [len(r) for r in chosen]
    for i, chunk in zip(keep, torch.split(per_token, lengths)):
        out[i] = float(chunk.mean())
    return out


def _batched_logprob(system: System, tokenizer, prompts: list, responses: list[list[int]], batch: int) -> list[float]:
    out: list[float] = []
    for i in range(0, len(prompts), batch):
        contexts = system.contexts(tokenizer, prompts[i : i + batch])
        out += mean_reply_logprob(system.model, tokenizer, contexts, responses[i : i + batch]).tolist()
    return out


@torch.no_grad()
def paragraph_nll(system: System, tokenizer, paragraphs: list[str], batch: int) -> list[float]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in paragraphs]
    return [-x for x in _batched_logprob(system, tokenizer, [PARAGRAPH_REQUEST] * len(ids), ids, batch)]


@torch.no_grad()
def multiple_choice_correct(system: System, tokenizer, items: list[dict], batch: int) -> list[bool]:
    prompts, options = [], []
    for item in items:
        for choice in item["choices"]:
            prompts.append(MC_TEMPLATE.format(question=item["question"]))
            options.append(tokenizer(choice, add_special_tokens=False)["input_ids"])
    scores = _batched_logprob(system, tokenizer, prompts, options, batch)
    correct, k = [], 0
    for item in items:
        n = len(item["choices"])
        row = scores[k : k + n]
        correct.append(max(range(n), key=row.__getitem__) == int(item["answer"]))
        k += n
    return correct


def _exp(estimate: Estimate) -> Estimate:
    return Estimate(math.exp(estimate.mean), math.exp(estimate.lo), math.exp(estimate.hi), estimate.n)


@SUITES.register("capability")
def capability(ctx: SuiteContext) -> SuiteResult:
    result = SuiteResult()
    prompts = benchmark_data.neutral_prompts()[: int(ctx.sizes["neutral_prompts"])]
    paragraphs = benchmark_data.neutral_paragraphs()[: int(ctx.sizes["neutral_paragraphs"])]
    items = benchmark_data.multiple_choice()[: int(ctx.sizes["multiple_choice"])]
    for system in ctx.systems:
        replies = system.generate(ctx.cache, ctx.tokenizer, prompts, ctx.seed + 500, desc="neutral prompts")
        kls = []
        for i in range(0, len(prompts), ctx.score_batch_size):
            kls += reply_kl(
                system,
                ctx.bare,
                ctx.tokenizer,
                prompts[i : i + ctx.score_batch_size],
                replies[i : i + ctx.score_batch_size],
            )
        result.put("kl_to_base", system.label, mean_ci(kls))
        result.put(
            "perplexity",
            system.label,
            _exp(mean_ci(paragraph_nll(system, ctx.tokenizer, paragraphs, ctx.score_batch_size))),
        )
        correct = multiple_choice_correct(system, ctx.tokenizer, items, 4 * ctx.score_batch_size)
        result.put("mc_accuracy", system.label, wilson(sum(correct), len(correct)))
    return result
