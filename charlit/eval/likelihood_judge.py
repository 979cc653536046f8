"""The likelihood judge (docs/evaluation.md): how much more likely a reply becomes when the constitution is in context.

For each reply, the judge model (the frozen base) scores the mean per-token log-probability of the reply
given the prompt with the constitution as system prompt, minus the same given the bare prompt. Replies
written in character gain; replies the bare model would write anyway do not.
"""

from __future__ import annotations

import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.data.constitution import Constitution
from charlit.kernels import fused_linear_logprobs
from charlit.models.heads import lm_head
from charlit.models.sequences import response_hidden, response_targets, segment_sum


def mean_reply_logprob(model, tokenizer, contexts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
    """Mean per-token log p(reply | context) for each reply, ``[B]`` (empty replies score 0)."""
    hidden = response_hidden(model, contexts, responses, tokenizer.pad_token_id)
    head = lm_head(model)
    targets = response_targets(responses, hidden.device)
    logp = fused_linear_logprobs(hidden, head.weight, targets, bias=head.bias, softcap=head.softcap)
    lengths = [len(r) for r in responses]
    sums = segment_sum(logp.float(), lengths)
    return sums / torch.tensor(lengths, device=sums.device).clamp(min=1)


@torch.no_grad()
def persona_gain_and_fluency(
    model, tokenizer, constitution: Constitution, prompts: list[str], responses: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-reply gain ``mean log p(reply | constitution) - mean log p(reply | bare prompt)`` and the second term
    alone, the reply's *fluency* under the judge model (see :mod:`charlit.quality`), both ``[B]``."""
    with_ctx = [render_prompt_ids(tokenizer, teacher_messages(p, constitution)) for p in prompts]
    bare = [render_prompt_ids(tokenizer, student_messages(p)) for p in prompts]
    fluency = mean_reply_logprob(model, tokenizer, bare, responses)
    return mean_reply_logprob(model, tokenizer, with_ctx, responses) - fluency, fluency


def persona_gain(
    model, tokenizer, constitution: Constitution, prompts: list[str], responses: list[list[int]]
) -> torch.Tensor:
    """Per-reply gain ``mean log p(reply | constitution) - mean log p(reply | bare prompt)``, ``[B]``."""
    return persona_gain_and_fluency(model, tokenizer, constitution, prompts, responses)[0]
