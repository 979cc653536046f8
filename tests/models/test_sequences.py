import pytest
import torch

from charlit.models.sequences import pack, response_hidden, segment_sum, shared_prefix_length
from charlit.models.tiny import tiny_model


def test_response_hidden_predicts_each_response_token():
    """Row k of response_hidden, through the lm_head, equals the model's own logits for response token k."""
    model = tiny_model(97, seed=3).double().eval()
    contexts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    responses = [[20, 21], [22, 23, 24, 25], [26]]
    hidden = response_hidden(model, contexts, responses, pad_id=0)
    assert hidden.shape == (7, model.config.hidden_size)
    logits = hidden @ model.lm_head.weight.T
    rows = []
    for ctx, resp in zip(contexts, responses):
        full = model(torch.tensor([ctx + resp])).logits[0]
        rows.append(full[len(ctx) - 1 : len(ctx) - 1 + len(resp)])
    torch.testing.assert_close(logits, torch.cat(rows), rtol=1e-9, atol=1e-9)


def test_pack_pads_right_and_indexes_responses():
    ids, mask, (rows, cols) = pack([[1, 2], [3]], [[4], [5, 6]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4], [3, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [1, 0, 1]


def test_segment_sum_adds_each_sequences_values():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], requires_grad=True)
    sums = segment_sum(values, [2, 0, 3, 1])  # [1+2, empty, 3+4+5, 6]
    assert sums.tolist() == [3.0, 0.0, 12.0, 6.0]
    (sums * torch.tensor([1.0, 10.0, 100.0, 1000.0])).sum().backward()
    assert values.grad.tolist() == [1.0, 1.0, 100.0, 100.0, 100.0, 1000.0]
    with pytest.raises(ValueError, match="6 values but lengths adding up to 5"):
        segment_sum(values, [2, 3])


def test_shared_prefix_cache_gives_the_same_hidden_states():
    model = tiny_model(97, seed=4).double().eval()
    prefix = list(range(30, 70))
    contexts = [prefix + [5, 6], prefix + [7], prefix + [8, 9, 10]]
    responses = [[20, 21], [22, 23, 24], [25]]
    with torch.no_grad():
        plain = response_hidden(model, contexts, responses, pad_id=0, min_shared_prefix=10**9)
        cached = response_hidden(model, contexts, responses, pad_id=0, min_shared_prefix=8)
    torch.testing.assert_close(cached, plain, rtol=1e-9, atol=1e-9)


def test_shared_prefix_length_keeps_one_context_token():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 5]]) == 1
    assert shared_prefix_length([[4], [4, 5]]) == 0


def test_prefix_kv_is_encoded_once_across_calls_and_changes_nothing():
    from charlit.models.heads import PrefixKV

    model = tiny_model(120, seed=3).double().eval()
    prefix = list(range(3, 43))
    contexts = [prefix + [50, 51], prefix + [60], prefix + [70, 71, 72]]
    responses = [[5, 6, 7], [8], [9, 10]]
    calls = []
    decoder = model.get_decoder()
    hook = decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    kv = PrefixKV()
    with torch.no_grad():
        plain = response_hidden(model, contexts, responses, pad_id=0)
        n_plain = len(calls)
        first = response_hidden(model, contexts, responses, pad_id=0, prefix_kv=kv)
        second = response_hidden(model, contexts[::-1], responses[::-1], pad_id=0, prefix_kv=kv)
    hook.remove()
    assert n_plain == 2  # prefix, then the rows
    assert len(calls) == n_plain + 2 + 1  # the kept prefix is encoded once for both calls
    assert torch.allclose(first, plain, atol=1e-12, rtol=0)
    lengths = [len(r) for r in responses]
    rev = torch.cat(list(reversed(torch.split(plain, lengths))))
    assert torch.allclose(second, rev, atol=1e-12, rtol=0)


def test_shared_context_hidden_matches_separate_rows_with_gradients():
    from charlit.models.sequences import shared_context_hidden

    model = tiny_model(120, seed=3).double().train()
    contexts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    chosen = [[20, 21, 22], [23], [24, 25]]
    rejected = [[30], [31, 32, 33, 34], [35, 36]]
    ref = response_hidden(model, contexts * 2, chosen + rejected, pad_id=0)
    got = shared_context_hidden(model, contexts, [chosen, rejected], pad_id=0)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(ref)
    params = [p for p in model.parameters()]
    g_ref = torch.autograd.grad((ref * weights).sum(), params)
    g_got = torch.autograd.grad((got * weights).sum(), params)
    for a, b in zip(g_got, g_ref):  # the prompt's share flows back through the shared KV cache
        assert (a - b).abs().max() <= 1e-6 * b.abs().max().clamp_min(1e-12)
    single = shared_context_hidden(model, contexts, [[[40]] * 3], pad_id=0)  # no second pass needed
    torch.testing.assert_close(single, response_hidden(model, contexts, [[40]] * 3, pad_id=0), rtol=1e-10, atol=1e-10)


def test_shared_context_hidden_rejects_ragged_groups():
    import pytest

    from charlit.models.sequences import shared_context_hidden

    with pytest.raises(ValueError, match="2 contexts but response groups of sizes"):
        shared_context_hidden(tiny_model(50, seed=1), [[1, 2], [3]], [[[4], [5]], [[6]]], pad_id=0)
