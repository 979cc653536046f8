import itertools

import pytest

from charlit.data.loader import GlobalBatchSampler, train_loader


def test_ranks_together_see_exactly_the_single_process_batches():
    single = list(GlobalBatchSampler(23, 6, seed=3))
    ranks = [list(GlobalBatchSampler(23, 6, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 3 and all(len(b) == 6 for b in single)  # 23 // 6 full batches, remainder dropped
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch
        assert len(ranks[0][step]) == len(ranks[1][step]) == 3


def test_each_pass_is_a_new_permutation_without_repeats():
    sampler = GlobalBatchSampler(12, 4, seed=0)
    first, second = [sum(list(sampler), []) for _ in range(2)]
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second
    assert sampler.epoch == 2


def test_tiny_dataset_gives_one_partial_batch_split_over_ranks():
    (whole,) = list(GlobalBatchSampler(3, 8, seed=1))
    (left,), (right,) = (list(GlobalBatchSampler(3, 8, seed=1, rank=r, world_size=2)) for r in range(2))
    assert sorted(whole) == [0, 1, 2] and left + right == whole and len(left) == 2


@pytest.mark.parametrize("consumed", [0, 2, 3, 5])
def test_resume_continues_with_the_next_unseen_batch(consumed):
    reference = GlobalBatchSampler(10, 4, seed=7)  # 2 batches per pass
    expected = list(itertools.islice(itertools.chain(iter(reference), iter(reference), iter(reference)), 6))

    interrupted = GlobalBatchSampler(10, 4, seed=7)
    passes = itertools.chain.from_iterable(iter(interrupted) for _ in range(3))
    seen = list(itertools.islice(passes, consumed))
    state = interrupted.state_dict()

    resumed = GlobalBatchSampler(10, 4, seed=7)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(itertools.chain.from_iterable(iter(resumed) for _ in range(3)), 6 - consumed))
    assert seen + rest == expected


def test_loader_is_stateful_for_lightning():
    loader = train_loader(list("abcdefgh"), 4, seed=0, collate_fn=lambda b: b)
    it = iter(loader)
    first = next(it)
    state = loader.state_dict()
    again = train_loader(list("abcdefgh"), 4, seed=0, collate_fn=lambda b: b)
    again.load_state_dict(state)
    assert next(iter(again)) == next(it) != first


def test_global_batch_must_split_over_ranks():
    with pytest.raises(ValueError, match="data.batch_size=5 .* not divisible by the 2"):
        GlobalBatchSampler(10, 5, world_size=2)
