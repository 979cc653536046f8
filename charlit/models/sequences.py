"""Pack (context, response) pairs into one right-padded batch and pull out the hidden states that predict
each response token, so a student and a teacher with different contexts yield row-aligned ``[N, H]`` tensors; and
sum per-token values back per sequence (``segment_sum``)."""

from __future__ import annotations

import torch

from charlit.kernels import fused_linear_logprobs
from charlit.models.heads import PrefixKV, _unwrap, cache_kwargs, checkpointing_on, final_hidden, lm_head, output_cache


def right_pad(sequences: list[list[int]], pad_id: int, width: int | None = None):
    """``[len(sequences), width]`` token ids padded on the right with ``pad_id``, and the matching 0/1 mask."""
    width = max(len(q) for q in sequences) if width is None else width
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, q in enumerate(sequences):
        if q:
            input_ids[i, : len(q)] = torch.tensor(q)
            mask[i, : len(q)] = 1
    return input_ids, mask


def pack(contexts: list[list[int]], responses: list[list[int]], pad_id: int, device=None):
    """Return ``input_ids``, ``attention_mask`` and the flat (row, position) index of every response-predicting
    state."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses.")
    if any(not c for c in contexts):
        raise ValueError("Every sequence needs a non-empty context (the rendered prompt).")
    input_ids, attention = right_pad([c + r for c, r in zip(contexts, responses)], pad_id)
    rows, cols = [], []
    for i, (ctx, resp) in enumerate(zip(contexts, responses)):
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


def response_hidden(
    model,
    contexts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
    min_shared_prefix: int = 32,
    prefix_kv: PrefixKV | None = None,
) -> torch.Tensor:
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


def segment_sum(values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per-sequence sums ``[len(lengths)]`` of flat per-token ``values`` laid out sequence after sequence, the
    i-th sequence holding ``lengths[i]`` of them (an empty sequence sums to 0); differentiable."""
    if sum(lengths) != values.shape[0]:
        raise ValueError(f"segment_sum got {values.shape[0]} values but lengths adding up to {sum(lengths)}.")
    owner = torch.repeat_interleave(
        torch.arange(len(lengths), device=values.device), torch.tensor(lengths, dtype=torch.long, device=values.device)
    )
    return values.new_zeros(len(lengths)).index_add(0, owner, values)


def shared_context_hidden(
    model, contexts: list[list[int]], response_groups: list[list[list[int]]], pad_id: int
) -> torch.Tensor:
    """Like ``response_hidden`` over rows ``(contexts[i], group[i])`` for every group in turn, but each context is
    encoded once and its KV cache shared by its responses (DPO's chosen and rejected answers share their prompt).

    Returns ``[sum of all response lengths, H]`` in group-major, example-major order — the order of
    ``response_hidden(model, contexts * len(response_groups), sum(response_groups, []), pad_id)`` — and is
    differentiable (gradients flow through the shared cache). Falls back to exactly that call when the model
    cannot keep a cache (gradient checkpointing while training).
    """
    flat = [r for group in response_groups for r in group]
    base = _unwrap(model)
    if checkpointing_on(base) and model.training:
        return response_hidden(model, contexts * len(response_groups), flat, pad_id)
    if any(len(group) != len(contexts) for group in response_groups):
        raise ValueError(f"{len(contexts)} contexts but response groups of sizes {[len(g) for g in response_groups]}.")
    if any(not c for c in contexts):
        raise ValueError("Every sequence needs a non-empty context (the rendered prompt).")
    device = next(model.parameters()).device
    decoder = base.get_decoder()
    n, groups = len(contexts), len(response_groups)
    # 1) each context once, right-padded; its last state predicts the first response token
    ctx_len = torch.tensor([len(c) for c in contexts], device=device)
    ids, mask = (t.to(device) for t in right_pad(contexts, pad_id))
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
    first = out.last_hidden_state[torch.arange(n, device=device), ctx_len - 1]  # [n, H]
    # 2) every response but its last token, after its context's cache
    owner = torch.arange(n, device=device).repeat(groups)  # row -> context
    steps = max(len(r) for r in flat) - 1
    if steps <= 0:
        rest = first.new_zeros((groups * n, 0, first.shape[-1]))
    else:
        cache = output_cache(out)
        cache.batch_select_indices(owner)
        r_ids, r_mask = (t.to(device) for t in right_pad([r[:-1] for r in flat], pad_id, steps))
        positions = ctx_len[owner].unsqueeze(1) + torch.arange(steps, device=device)
        rest = decoder(
            input_ids=r_ids,
            attention_mask=torch.cat([mask[owner], r_mask], dim=1),
            position_ids=positions,
            **cache_kwargs(decoder, cache),
            use_cache=True,
        ).last_hidden_state  # [rows, steps, H]
    states = torch.cat([first[owner].unsqueeze(1), rest], dim=1)  # [rows, 1 + steps, H]
    rows = torch.tensor([row for row, r in enumerate(flat) for _ in r], dtype=torch.long, device=device)
    cols = torch.tensor([k for r in flat for k in range(len(r))], dtype=torch.long, device=device)
    return states[rows, cols]


def paired_response_logps(model, contexts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad_id):
    """Per-token log-probs of every chosen response, then every rejected one (flat), with the hidden states and head
    they came from; each context is encoded once for both of its responses (``shared_context_hidden``)."""
    hidden = shared_context_hidden(model, contexts, [chosen, rejected], pad_id)
    head = lm_head(model)
    targets = response_targets(chosen + rejected, hidden.device)
    return fused_linear_logprobs(hidden, head.weight, targets, bias=head.bias, softcap=head.softcap), hidden, head
