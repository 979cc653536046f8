"""Access to the pieces the fused losses need: final (normed) hidden states and the lm_head, never logits."""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import torch


def _unwrap(model):
    """The underlying transformers model of a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def checkpointing_on(model) -> bool:
    """Whether activation checkpointing is on in ``model`` (or the model a peft wrapper holds). Reads
    ``is_activation_checkpointing`` where transformers has it, the deprecated ``is_gradient_checkpointing`` in
    releases before it."""
    base = _unwrap(model)
    on = getattr(base, "is_activation_checkpointing", None)
    if on is None:
        on = getattr(base, "is_gradient_checkpointing", False)
    return bool(on)


@functools.cache
def _cache_argument(cls: type) -> str:
    """The keyword ``cls.forward`` takes a KV cache under: ``cache`` in transformers releases that renamed it
    (5.x, where ``past_key_values`` is a deprecated alias), ``past_key_values`` in earlier ones."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{<the model's cache keyword>: cache}`` for a forward or ``generate`` call of ``model`` (a transformers
    model, its decoder, or a peft wrapper, which passes the keyword through)."""
    return {_cache_argument(type(_unwrap(model))): cache}


def output_cache(output):
    """The KV cache a ``use_cache=True`` forward returned (``output.cache``; ``past_key_values`` before the rename)."""
    if "cache" in getattr(type(output), "__dataclass_fields__", {}):
        return output.cache
    return output.past_key_values


@dataclass
class LMHead:
    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None


def lm_head(model) -> LMHead:
    base = _unwrap(model)
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (lm_head): charlit needs a causal LM.")
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return LMHead(weight=head.weight, bias=getattr(head, "bias", None), softcap=softcap)


class PrefixKV:
    """The KV cache of a shared context prefix, kept across calls for a network whose weights do not change.

    A frozen teacher reads the same constitution (hundreds of tokens) at every step; with one of these it is
    encoded once per run instead of once per batch.  The cache is keyed by the decoder and the prefix tokens;
    every call gets a copy, since the forward that uses it appends to it.  Only for frozen weights: nothing
    here notices a weight update.
    """

    def __init__(self):
        self._key = None
        self._cache = None

    def get(self, decoder, prefix_ids: torch.Tensor):
        key = (id(decoder), prefix_ids.device, tuple(prefix_ids.tolist()))
        if key != self._key:
            self._cache = output_cache(decoder(input_ids=prefix_ids[None], use_cache=True))
            self._key = key
        return copy.deepcopy(self._cache)


def final_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix_ids: torch.Tensor | None = None,
    prefix_kv: PrefixKV | None = None,
) -> torch.Tensor:
    """Run the decoder stack only and return the final hidden states ``[B, T, H]`` (the lm_head is not applied).

    ``prefix_ids`` (``[P]``), when given, is a context shared by every row that precedes ``input_ids``: it is
    encoded once and its KV cache repeated across the batch (the teacher's constitution system prompt is
    hundreds of tokens, identical for every prompt). Hidden states are returned for ``input_ids`` only.
    ``prefix_kv`` keeps that encoding across calls (frozen networks only).
    """
    base = _unwrap(model)
    decoder = base.get_decoder()
    if prefix_ids is None or prefix_ids.numel() == 0:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if prefix_kv is not None:
        cache = prefix_kv.get(decoder, prefix_ids)
    else:
        cache = output_cache(decoder(input_ids=prefix_ids[None], use_cache=True))
    cache.batch_repeat_interleave(input_ids.shape[0])
    prefix_mask = torch.ones(
        (input_ids.shape[0], prefix_ids.numel()), dtype=attention_mask.dtype, device=attention_mask.device
    )
    out = decoder(
        input_ids=input_ids,
        attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
        use_cache=True,
        **cache_kwargs(decoder, cache),
    )
    return out.last_hidden_state
