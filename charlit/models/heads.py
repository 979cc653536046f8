"""Access to the pieces the fused losses need: final (normed) hidden states and the lm_head, never logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _unwrap(model):
    """The underlying transformers model of a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


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


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run the decoder stack only and return the final hidden states ``[B, T, H]`` (the lm_head is not applied)."""
    base = _unwrap(model)
    decoder = base.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state
