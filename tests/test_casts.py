"""The cast cache: one copy per live, unmodified tensor; a new one after an in-place change; gone with its tensor."""

import gc

import torch

from charlit.casts import CastCache, cpu_bf16_autocast


def test_one_copy_while_unchanged_and_a_new_one_after_a_change():
    cache, weight = CastCache(), torch.randn(8, 4)
    first = cache.get(weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and torch.equal(first, weight.bfloat16())
    assert cache.get(weight, torch.bfloat16) is first
    assert cache.get(weight, torch.float32) is weight
    weight.mul_(3.0)
    second = cache.get(weight, torch.bfloat16)
    assert second is not first and torch.equal(second, weight.bfloat16())


def test_an_entry_goes_with_its_tensor():
    cache = CastCache()
    weight = torch.randn(8, 4)
    cache.get(weight, torch.bfloat16)
    assert len(cache) == 1
    del weight
    gc.collect()
    assert len(cache) == 0


def test_cpu_bf16_autocast_is_only_bf16_cpu_autocast():
    assert not cpu_bf16_autocast()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16_autocast()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not cpu_bf16_autocast()
