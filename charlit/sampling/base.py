"""The sampler interface: token-id prompts in, token-id responses out; backends register in :data:`SAMPLERS`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from charlit.registry import Registry
from charlit.settings import parse, setting

SAMPLERS = Registry("sampler", package="charlit.sampling", group="charlit.samplers", option="sampler")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch: temperature → top-k → top-p, as Hugging Face ``generate`` applies them."""

    max_new_tokens: int = setting(48, ge=1)
    temperature: float = setting(1.0, ge=0, help="0 = greedy")
    top_p: float = setting(1.0, gt=0, le=1)
    top_k: int = setting(0, ge=0, help="0 = off")


@dataclass
class SamplerSettings:
    """Settings every sampler takes (the ``sampler`` group): how many prompts per call plus its sampling."""

    batch_size: int = setting(16, ge=1)
    max_new_tokens: int = setting(48, ge=1)
    temperature: float = setting(1.0, ge=0, help="sampling temperature; 0 = greedy (the loss has its own)")
    top_p: float = setting(1.0, gt=0, le=1)
    top_k: int = setting(0, ge=0)

    def params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
        )


class Sampler(ABC):
    """Generates responses for prompts given as token ids.

    Responses are returned as token-id lists that end at (and include) the first end-of-turn token, or
    at ``max_new_tokens`` when the model did not finish. ``seed`` makes a call reproducible without
    touching the caller's random state. A subclass registered in :data:`SAMPLERS` declares its settings as a
    ``Config`` dataclass (at least :class:`SamplerSettings`) and is built by ``from_config(config, tokenizer)``.
    """

    Config = SamplerSettings

    @classmethod
    def from_config(cls, config, tokenizer) -> Sampler:
        return cls(tokenizer, batch_size=config.batch_size)

    def off_policy(self, model) -> bool:
        """True when this sampler draws from other weights than ``model``'s own (bf16 copies of an fp32 learner), so
        its samples need importance weights; ``generate(..., logprobs=True)`` then also returns each drawn token's
        log-probability."""
        return False

    @abstractmethod
    def generate(
        self,
        model,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        seed: int | None = None,
        desc: str | None = None,
    ) -> list[list[int]]: ...


def sampler_settings(cfg) -> SamplerSettings:
    """The ``sampler`` group parsed into its sampler's ``Config``."""
    return parse(SAMPLERS.get(cfg.get("name", "hf")).Config, cfg, "sampler")


def build_sampler(cfg, tokenizer) -> Sampler:
    """The sampler the ``sampler`` group names, with its checked settings."""
    cls = SAMPLERS.get(cfg.get("name", "hf"))
    return cls.from_config(parse(cls.Config, cfg, "sampler"), tokenizer)
