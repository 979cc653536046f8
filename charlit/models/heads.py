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


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Run the decoder stack only and return the final hidden states ``[B, T, H]`` (the lm_head is not applied).

    ``prefix_ids`` (``[P]``), when given, is a context shared by every row that precedes ``input_ids``: it is
    encoded once and its KV cache repeated across the batch (the teacher's constitution system prompt is
    hundreds of tokens, identical for every prompt). Hidden states are returned for ``input_ids`` only.
    """
    base = _unwrap(model)
    decoder = base.get_decoder()
    if prefix_ids is None or prefix_ids.numel() == 0:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    cache = decoder(input_ids=prefix_ids[None], use_cache=True).past_key_values
    cache.batch_repeat_interleave(input_ids.shape[0])
    prefix_mask = torch.ones((input_ids.shape[0], prefix_ids.numel()), dtype=attention_mask.dtype, device=attention_mask.device)
    out = decoder(input_ids=input_ids, attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
                  past_key_values=cache, use_cache=True)
    return out.last_hidden_state
