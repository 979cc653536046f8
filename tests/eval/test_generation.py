"""The generation cache (hits skip the sampler; every key ingredient matters) and the shared-prefix sampler
(same tokens as the plain sampler)."""

import torch

from charlit.eval.generation_cache import GenerationCache, weights_identity
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.systems import System
from charlit.models.tiny import tiny_model
from charlit.sampling import SamplingParams
from charlit.sampling.hf import HFSampler


class CountingSampler:
    def __init__(self):
        self.calls = 0

    def generate(self, model, prompts, params, *, seed=None, desc=None):
        self.calls += 1
        return [[seed or 0, len(p)] for p in prompts]


def test_cache_hit_skips_the_sampler_and_returns_the_same_replies(tmp_path):
    sampler = CountingSampler()
    cache = GenerationCache(sampler, SamplingParams(max_new_tokens=8), tmp_path)
    first = cache.generate(None, "model-a", [[1, 2, 3], [4, 5]], seed=7)
    again = GenerationCache(sampler, SamplingParams(max_new_tokens=8), tmp_path).generate(
        None, "model-a", [[1, 2, 3], [4, 5]], seed=7
    )
    assert first == again == [[7, 3], [7, 2]]
    assert sampler.calls == 1


def test_cache_key_depends_on_model_contexts_params_and_seed(tmp_path):
    cache = GenerationCache(CountingSampler(), SamplingParams(max_new_tokens=8), tmp_path)
    base = cache.key("m", [[1, 2]], 0)
    assert base != cache.key("other", [[1, 2]], 0)
    assert base != cache.key("m", [[1, 3]], 0)
    assert base != cache.key("m", [[1, 2]], 1)
    hotter = GenerationCache(CountingSampler(), SamplingParams(max_new_tokens=8, temperature=0.5), tmp_path)
    assert base != hotter.key("m", [[1, 2]], 0)


def test_disabled_cache_always_samples():
    sampler = CountingSampler()
    cache = GenerationCache(sampler, SamplingParams(), None)
    cache.generate(None, "m", [[1]], seed=0)
    cache.generate(None, "m", [[1]], seed=0)
    assert sampler.calls == 2


def test_weights_identity_tracks_the_weights(tokenizer):
    a, b = tiny_model(len(tokenizer), seed=1), tiny_model(len(tokenizer), seed=1)
    assert weights_identity(a) == weights_identity(b)
    with torch.no_grad():
        next(b.parameters())[0, 0] += 1e-3
    assert weights_identity(a) != weights_identity(b)


def test_shared_prefix_sampler_matches_the_plain_sampler(tokenizer, pirate):
    model = tiny_model(len(tokenizer), seed=3).eval()
    system = System("prompted", model, "x", pirate.system_prompt())
    contexts = system.contexts(
        tokenizer, ["How do I boil an egg?", "Hi!", "What is the tallest tree in the world, and where is it?"]
    )
    params = SamplingParams(max_new_tokens=6, temperature=0)
    plain = HFSampler(tokenizer, batch_size=2).generate(model, contexts, params, seed=0)
    shared = SharedPrefixSampler(tokenizer, batch_size=2).generate(model, contexts, params, seed=0)
    assert shared == plain
