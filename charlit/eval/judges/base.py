"""The persona-judge interface and its registry: a judge scores how in character each reply is."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from charlit.data.constitution import Constitution


@dataclass(frozen=True)
class Reply:
    prompt: object          # the user prompt: a string, or the conversation so far (messages ending with a user turn)
    ids: tuple[int, ...]    # the reply's token ids (as sampled, end-of-turn token included)
    text: str               # the decoded reply


class PersonaJudge(ABC):
    """Scores replies against a constitution; higher means more in character."""

    name: str = ""

    @abstractmethod
    def score(self, replies: list[Reply], constitution: Constitution) -> list[float]:
        ...


_REGISTRY: dict[str, Callable[..., PersonaJudge]] = {}


def register_judge(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory
    return wrap


def judge_names() -> list[str]:
    return sorted(_REGISTRY)


def build_judge(name: str, *, base_model, tokenizer, **options) -> PersonaJudge:
    """A registered judge by name; ``base_model``/``tokenizer`` are the frozen base the likelihood judge scores with."""
    from charlit.eval import judges  # noqa: F401  (importing the package registers the bundled judges)

    if name not in _REGISTRY:
        raise ValueError(f"judges=[..., {name!r}] is not a registered judge; valid choices: {', '.join(judge_names())}.")
    return _REGISTRY[name](base_model=base_model, tokenizer=tokenizer, **options)
