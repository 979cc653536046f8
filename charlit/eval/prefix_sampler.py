"""Sampling that encodes a prompt prefix shared by the whole call once (the constitution system prompt is
~450 tokens, identical for every prompt of the prompted base): its KV cache is computed once and repeated
across each batch; every row is laid out as ``[prefix][padding][own suffix]`` (padding masked out, positions
from the attention mask). Calls without a long shared prefix fall back to the plain Hugging Face sampler."""

from __future__ import annotations

import copy

import torch

from charlit.models.heads import cache_kwargs, output_cache
from charlit.models.modes import eval_mode
from charlit.models.sequences import shared_prefix_length
from charlit.progress import progress
from charlit.sampling.base import Sampler, SamplingParams
from charlit.sampling.hf import HFSampler, end_token_ids, trim_response


class SharedPrefixSampler(Sampler):
    def __init__(self, tokenizer, batch_size: int = 8, min_prefix: int = 64):
        self.tokenizer, self.batch_size, self.min_prefix = tokenizer, batch_size, min_prefix
        self.plain = HFSampler(tokenizer, batch_size=batch_size)

    @torch.no_grad()
    def generate(self, model, prompts, params: SamplingParams, *, seed=None, desc=None):
        shared = shared_prefix_length(prompts) if len(prompts) > 1 else 0
        if shared < self.min_prefix:
            return self.plain.generate(model, prompts, params, seed=seed, desc=desc)
        stop_ids = end_token_ids(self.tokenizer, model)
        pad_id = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        prefix = torch.tensor(prompts[0][:shared], dtype=torch.long, device=device)
        out: list[list[int]] = []
        with (
            eval_mode(model),
            self.plain.decode_weights(model),
            torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]),
        ):
            if seed is not None:
                torch.manual_seed(seed)
            prefix_cache = output_cache(model(input_ids=prefix[None], use_cache=True))
            starts = range(0, len(prompts), self.batch_size)
            for start in progress(starts, desc or "generate", unit="batch", leave=False, show=len(starts) > 1):
                chunk = [p[shared:] for p in prompts[start : start + self.batch_size]]
                width = max(len(s) for s in chunk)
                input_ids = torch.full((len(chunk), shared + width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), shared + width), dtype=torch.long)
                input_ids[:, :shared] = prefix.cpu()
                attention[:, :shared] = 1
                for row, ids in enumerate(chunk):
                    input_ids[row, shared + width - len(ids) :] = torch.tensor(ids)
                    attention[row, shared + width - len(ids) :] = 1
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(chunk))
                sampling = params.temperature > 0
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    **cache_kwargs(model, cache),
                    max_new_tokens=params.max_new_tokens,
                    do_sample=sampling,
                    temperature=params.temperature if sampling else None,
                    top_p=params.top_p if sampling else None,
                    top_k=params.top_k if sampling else None,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                )
                out += [trim_response(row, set(stop_ids)) for row in generated[:, shared + width :].tolist()]
        return out
