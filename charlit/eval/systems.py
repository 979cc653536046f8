"""The systems an evaluation compares: the model under test and its reference points.

A system is a model plus an optional system prompt: the bare base model, the base model prompted with
the constitution, the model under test (a trained checkpoint, or the base itself for the untrained
baseline) and optionally another checkpoint. Each renders prompts its own way and samples through the
shared generation cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from charlit.data.chat import as_messages, render_prompt_ids, with_system
from charlit.eval.generation_cache import GenerationCache


@dataclass
class System:
    label: str  # "bare", "prompted", "model", "compare"
    model: object  # a transformers causal LM in eval mode
    model_id: str  # weights identity (see generation_cache.weights_identity)
    system_prompt: str | None  # the constitution for the prompted base, else None

    def messages(self, prompt) -> list[dict]:
        messages = as_messages(prompt)
        return with_system(messages, self.system_prompt) if self.system_prompt else messages

    def contexts(self, tokenizer, prompts: list) -> list[list[int]]:
        return [render_prompt_ids(tokenizer, self.messages(p)) for p in prompts]

    def generate(self, cache: GenerationCache, tokenizer, prompts: list, seed: int, desc: str = "") -> list[list[int]]:
        return cache.generate(
            self.model, self.model_id, self.contexts(tokenizer, prompts), seed, desc=f"{self.label} {desc}".strip()
        )
