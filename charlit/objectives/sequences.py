"""Pack (context, response) pairs into one right-padded batch and pull out the hidden states that predict
each response token, so a student and a teacher with different contexts yield row-aligned ``[N, H]`` tensors."""
from __future__ import annotations

import torch

from charlit.models.heads import final_hidden


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


def response_hidden(model, contexts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    """Final hidden states predicting each response token, ``[sum(len(r)), H]`` in example-major order."""
    device = next(model.parameters()).device
    input_ids, attention, index = pack(contexts, responses, pad_id, device)
    hidden = final_hidden(model, input_ids, attention)
    return hidden[index]


def response_targets(responses: list[list[int]], device=None) -> torch.Tensor:
    flat = [tok for r in responses for tok in r]
    return torch.tensor(flat, dtype=torch.long, device=device)
