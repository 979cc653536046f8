"""A tiny randomly initialised Llama with the default model's tokenizer and chat template, for tests and smoke runs."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_ID = "tiny"


def tiny_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides) -> LlamaConfig:
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_model(
    vocab_size: int, seed: int = 0, bos_token_id=None, eos_token_id=None, pad_token_id=None, **overrides
) -> LlamaForCausalLM:
    """Build a tiny model deterministically from ``seed`` (the global RNG state is left untouched)."""
    config = tiny_config(
        vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **overrides
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model
