"""The lean sampling loop: Hugging Face's greedy tokens, exact sampling probabilities, its filters and stops."""

from __future__ import annotations

import pytest
import torch

from charlit.models.tiny import tiny_model
from charlit.sampling import decode
from charlit.sampling.base import SamplingParams
from tests.sampling.helpers import PAD, VOCAB, left_padded


def _filtered_reference(logits, temperature, top_k, top_p):
    """Float64, one row: the kept tokens of temperature → top-k → top-p (the smallest set of the most likely
    tokens whose mass reaches top_p)."""
    z = logits.double() / temperature
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k:
        keep &= z >= torch.sort(z, descending=True).values[top_k - 1]
    p = torch.where(keep, z, torch.tensor(float("-inf"), dtype=z.dtype)).softmax(-1)
    kept, mass = set(), 0.0
    for i in sorted(range(len(z)), key=lambda i: -p[i].item()):
        kept.add(i)
        mass += p[i].item()
        if mass >= top_p:
            break
    return keep & torch.tensor([i in kept for i in range(len(z))])


LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.4, 0.1, -1.0, -3.0]])


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.7), (4, 0.5)])
def test_filters_keep_the_reference_set(top_k, top_p):
    params = SamplingParams(max_new_tokens=1, temperature=0.8, top_k=top_k, top_p=top_p)
    kept = torch.isfinite(decode.filtered_scores(LOGITS, params))[0]
    assert kept.tolist() == _filtered_reference(LOGITS[0], 0.8, top_k, top_p).tolist()


def test_draws_follow_the_softmax():
    params = SamplingParams(max_new_tokens=1, temperature=0.8)
    torch.manual_seed(0)
    n = 200_000
    counts = torch.bincount(decode.next_tokens(LOGITS.expand(n, -1), params), minlength=7).double()
    expected = (LOGITS[0].double() / 0.8).softmax(-1) * n
    # every count within 5 standard deviations of its binomial expectation
    assert ((counts - expected).abs() <= 5 * (expected * (1 - expected / n)).sqrt() + 1).all(), (counts, expected)


def test_filtered_tokens_are_never_drawn_and_greedy_is_argmax():
    torch.manual_seed(1)
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_k=2)
    assert set(decode.next_tokens(LOGITS.expand(5000, -1), params).tolist()) == {0, 1}
    assert decode.next_tokens(
        torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 0.0]]), SamplingParams(max_new_tokens=1, temperature=0.0)
    ).tolist() == [1, 0]


def test_greedy_matches_generate_and_rows_stop_on_their_own():
    model = tiny_model(VOCAB, seed=2).eval()
    ids, mask = left_padded([[5, 17, 33, 2, 9], [8, 1], [44, 45, 46]])
    with torch.no_grad():
        reference = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=[VOCAB],
        )[:, ids.shape[1] :]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    assert decode.sample(model, ids, mask, params, [VOCAB], PAD).tolist() == reference.tolist()
    stop = int(reference[1, 3])  # a token row 1 produces: rows stop there, others run on
    got = decode.sample(model, ids, mask, params, [stop], PAD)
    row = got[1].tolist()
    assert row[: row.index(stop) + 1] == reference[1, : row.index(stop) + 1].tolist()
    assert all(t == PAD for t in row[row.index(stop) + 1 :])
