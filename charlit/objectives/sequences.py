"""Pack (context, response) pairs into one right-padded batch and pull out the hidden states that predict
each response token, so a student and a teacher with different contexts yield row-aligned ``[N, H]`` tensors."""
from __future__ import annotations

import torch

from charlit.models.heads import PrefixKV, final_hidden


def pack(contexts: list[list[int]], responses: list[list[int]], pad_id: int, device=None):
    """Return ``input_ids``, ``attention_mask`` and the flat (row, position) index of every response-predicting state."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses.")
    lengths = [len(c) + len(r) for c, r in zip(contexts, responses)]
    width = max(lengths)
    input_ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(contexts), width), dtype=torch.long)
    rows, cols = [], []
    for i, (ctx, resp) in enumerate(zip(contexts, responses)):
        if not ctx:
            raise ValueError("Every sequence needs a non-empty context (the rendered prompt).")
        ids = ctx + resp
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        # hidden state at position j predicts token j+1: response token k sits at len(ctx)+k
        rows.extend([i] * len(resp))
        cols.extend(range(len(ctx) - 1, len(ctx) - 1 + len(resp)))
    index = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
    if device is not None:
        input_ids, attention = input_ids.to(device), attention.to(device)
        index = (index[0].to(device), index[1].to(device))
    return input_ids, attention, index


def shared_prefix_length(contexts: list[list[int]]) -> int:
    """Length of the token prefix common to every context, leaving at least one token of each context."""
    shortest = min(len(c) for c in contexts)
    first = contexts[0]
    n = 0
    while n < shortest - 1 and all(c[n] == first[n] for c in contexts):
        n += 1
    return n


def response_hidden(model, contexts: list[list[int]], responses: list[list[int]], pad_id: int,
                    min_shared_prefix: int = 32, prefix_kv: PrefixKV | None = None) -> torch.Tensor:
    """Final hidden states predicting each response token, ``[sum(len(r)), H]`` in example-major order.

    Without gradients, a context prefix common to the whole batch (at least ``min_shared_prefix`` tokens)
    is encoded once and reused through the KV cache instead of once per row (and across calls with
    ``prefix_kv``, for a frozen ``model``).
    """
    device = next(model.parameters()).device
    shared = shared_prefix_length(contexts) if not torch.is_grad_enabled() else 0
    if shared < min_shared_prefix:
        shared = 0
    input_ids, attention, index = pack([c[shared:] for c in contexts], responses, pad_id, device)
    prefix = torch.tensor(contexts[0][:shared], dtype=torch.long, device=device) if shared else None
    hidden = final_hidden(model, input_ids, attention, prefix_ids=prefix, prefix_kv=prefix_kv)
    return hidden[index]


def response_targets(responses: list[list[int]], device=None) -> torch.Tensor:
    flat = [tok for r in responses for tok in r]
    return torch.tensor(flat, dtype=torch.long, device=device)
