"""The sampler interface: token-id prompts in, token-id responses out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"sampler.temperature={self.temperature} must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampler.top_p={self.top_p} must be in (0, 1].")


class Sampler(ABC):
    """Generates responses for prompts given as token ids.

    Responses are returned as token-id lists that end at (and include) the first end-of-turn token, or
    at ``max_new_tokens`` when the model did not finish. ``seed`` makes a call reproducible without
    touching the caller's random state.
    """

    @abstractmethod
    def generate(self, model, prompts: list[list[int]], params: SamplingParams, *, seed: int | None = None,
                 desc: str | None = None) -> list[list[int]]:
        ...


def build_sampler(cfg, tokenizer) -> Sampler:
    name = cfg.get("name", "hf")
    if name == "hf":
        from charlit.sampling.hf import HFSampler

        return HFSampler(tokenizer, batch_size=int(cfg.get("batch_size", 16)))
    if name == "vllm":
        from charlit.sampling.vllm import VLLMSampler

        return VLLMSampler(tokenizer, gpu_memory_utilization=float(cfg.get("gpu_memory_utilization", 0.5)),
                           dtype=str(cfg.get("dtype", "auto")))
    raise ValueError(f"sampler.name={name!r} is not available; valid choices: hf, vllm.")
