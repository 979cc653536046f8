"""Shared helpers for sampling tests: a tiny LoRA model whose adapter matters, and left-padded prompt batches."""

import torch
from peft import LoraConfig, get_peft_model

from charlit.models.tiny import tiny_model

VOCAB, PAD = 300, 0


def lora_model():
    """The tiny model with LoRA r4 on every linear layer, B drawn at random (peft starts it at 0), in eval mode."""
    model = get_peft_model(
        tiny_model(VOCAB, seed=1), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def left_padded(prompts):
    """``(input_ids, attention_mask)`` with every prompt ending where generation starts."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask
