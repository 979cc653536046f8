"""A lean KV-cached sampling loop for causal LMs (the HF sampler's loop).

Hugging Face ``generate`` does the same job with more per-step work than a small model can hide: its cache
grows by concatenation (every step copies the whole cache), and ``torch.multinomial`` draws one exponential
per vocabulary entry (49k for SmolLM2, ~4 ms a step on this project's CPU). Here the cache is preallocated
(transformers' ``StaticCache``) and a token is drawn by inverse CDF: one uniform per row against the
cumulative probabilities, an exact draw from the same distribution.

Semantics follow ``generate``: fp32 logits of the last position; temperature, then top-k, then top-p
(keep the smallest set of most likely tokens whose mass reaches ``top_p``); temperature 0 = greedy; rows
left-padded, positions from the attention mask; a finished row is fed the pad token; the loop ends when
every row has produced a stop token or after ``max_new_tokens``. With ``logprobs`` the loop also returns each drawn
token's log-probability under the distribution it was drawn from (0 for greedy steps): what an importance weight
needs when the sampling weights are not the learner's (:mod:`charlit.sampling.precision`).
"""

from __future__ import annotations

import torch

from charlit.models.heads import cache_kwargs
from charlit.sampling.base import SamplingParams


def filtered_scores(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``[B, V]`` fp32 logits → scores after temperature, top-k and top-p (removed tokens at -inf)."""
    scores = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - params.top_p
        drop[..., -1:] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def next_tokens(logits: torch.Tensor, params: SamplingParams, logprobs: bool = False):
    """One token per row of fp32 ``[B, V]`` logits (global RNG: seed it for reproducible draws); with ``logprobs``
    ``(tokens, log-probability of each under the filtered distribution)``, 0 for greedy rows."""
    if params.temperature == 0:
        token = logits.argmax(dim=-1)
        return (token, torch.zeros(token.shape, device=token.device)) if logprobs else token
    probs = filtered_scores(logits, params).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    # first index whose cumulative mass exceeds u: zero-probability (filtered) tokens are never drawn
    token = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)
    if not logprobs:
        return token
    return token, probs.gather(1, token.unsqueeze(1)).squeeze(1).log()


class HFForward:
    """A transformers model's KV-cached forward over ``slots`` preallocated cache slots (``StaticCache``), called as
    ``(input_ids [B, T], mask [B, slots], positions [B, T], start) -> fp32 logits [B, V]`` of the last position."""

    def __init__(self, model, slots: int):
        from transformers import StaticCache

        self.model = model
        self.cache_arg = cache_kwargs(model, StaticCache(config=model.config, max_cache_len=slots))

    def __call__(self, input_ids, mask, positions, start: int) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **self.cache_arg,
        )
        return out.logits[:, -1]


@torch.no_grad()
def sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    stop_ids: list[int],
    pad_id: int,
    logprobs: bool = False,
):
    """New tokens ``[B, steps]`` for left-padded ``input_ids`` (``steps`` ≤ ``max_new_tokens``; rows that
    stopped early are padded with ``pad_id`` after their stop token); with ``logprobs`` also their fp32
    log-probabilities ``[B, steps]``. ``model`` is a transformers model, or a decoder with its own cached forward
    (``kv_forward(slots)``, e.g. :class:`charlit.sampling.fused_llama.FusedLlama`)."""
    batch, width = input_ids.shape
    device = input_ids.device
    slots = width + params.max_new_tokens
    forward = model.kv_forward(slots) if hasattr(model, "kv_forward") else HFForward(model, slots)
    mask = torch.zeros((batch, slots), dtype=attention_mask.dtype, device=device)  # unwritten slots masked
    mask[:, :width] = attention_mask
    position = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    logits = forward(input_ids, mask, position, 0)
    position = position[:, -1:]
    tokens, token_logprobs = [], []
    for step in range(params.max_new_tokens):
        drawn = next_tokens(logits.float(), params, logprobs=logprobs)
        if logprobs:
            drawn, logprob = drawn
            token_logprobs.append(logprob)
        token = torch.where(unfinished, drawn, pad_id)
        tokens.append(token)
        unfinished &= ~torch.isin(token, stops)
        if not unfinished.any() or step == params.max_new_tokens - 1:
            break
        mask[:, width + step] = 1
        position = position + 1
        logits = forward(token.unsqueeze(1), mask, position, width + step)
    if logprobs:
        return torch.stack(tokens, dim=1), torch.stack(token_logprobs, dim=1)
    return torch.stack(tokens, dim=1)
