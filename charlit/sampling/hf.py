"""Batched, KV-cached sampling with Hugging Face models: charlit's lean loop (:mod:`charlit.sampling.decode`)
on fp32 CPU, Hugging Face ``generate`` elsewhere."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from charlit.models import onednn
from charlit.models.lora_merge import merged_lora
from charlit.models.modes import eval_mode
from charlit.progress import progress
from charlit.sampling import decode
from charlit.sampling.base import SAMPLERS, Sampler, SamplingParams
from charlit.sampling.lean_lora import lean_adapters


def end_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return sorted(ids)


def trim_response(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[: i + 1]
    return tokens


@SAMPLERS.register("hf")
class HFSampler(Sampler):
    def __init__(self, tokenizer, batch_size: int = 16):
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @contextmanager
    def decode_weights(self, model):
        """The model as decoding runs it: on fp32 CPU linear layers through oneDNN and LoRA as lean layers
        (merging would cost a weight copy per call); elsewhere merged LoRA weights."""
        if onednn.active(model):
            with onednn.swapped_in(model), lean_adapters(model):
                yield model
        else:
            with merged_lora(model):
                yield model

    @torch.no_grad()
    def generate(self, model, prompts, params: SamplingParams, *, seed=None, desc=None):
        stop_ids = end_token_ids(self.tokenizer, model)
        pad_id = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        chunks = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        bar = progress(chunks, desc or "generate", unit="batch", leave=False, show=len(chunks) > 1)
        out: list[list[int]] = []
        lean = onednn.active(model)
        with (
            eval_mode(model),
            self.decode_weights(model),
            torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]),
        ):
            if seed is not None:
                torch.manual_seed(seed)
            for chunk in bar:
                width = max(len(p) for p in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):  # left padding: every prompt ends where generation starts
                    input_ids[row, width - len(ids) :] = torch.tensor(ids)
                    attention[row, width - len(ids) :] = 1
                input_ids, attention = input_ids.to(device), attention.to(device)
                if lean:
                    generated = decode.sample(model, input_ids, attention, params, stop_ids, pad_id)
                else:
                    sampling = params.temperature > 0
                    generated = model.generate(
                        input_ids=input_ids,
                        attention_mask=attention,
                        max_new_tokens=params.max_new_tokens,
                        do_sample=sampling,
                        temperature=params.temperature if sampling else None,
                        top_p=params.top_p if sampling else None,
                        top_k=params.top_k if sampling else None,
                        eos_token_id=stop_ids,
                        pad_token_id=pad_id,
                        use_cache=True,
                    )[:, width:]
                for row in generated.tolist():
                    out.append(trim_response(row, set(stop_ids)))
        return out
