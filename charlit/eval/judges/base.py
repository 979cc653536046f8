"""The persona-judge interface and its registry: a judge scores how in character each reply is.

Judges register in :data:`JUDGES` from any module of :mod:`charlit.eval.judges` (third parties: the
``charlit.judges`` entry-point group) as a factory ``(*, base_model, tokenizer, **options) -> PersonaJudge``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from charlit.data.constitution import Constitution
from charlit.registry import Registry

JUDGES = Registry("judge", package="charlit.eval.judges", group="charlit.judges", option="judges")


@dataclass(frozen=True)
class Reply:
    prompt: object  # the user prompt: a string, or the conversation so far (messages ending with a user turn)
    ids: tuple[int, ...]  # the reply's token ids (as sampled, end-of-turn token included)
    text: str  # the decoded reply


class PersonaJudge(ABC):
    """Scores replies against a constitution; higher means more in character."""

    name: str = ""

    @abstractmethod
    def score(self, replies: list[Reply], constitution: Constitution) -> list[float]: ...


def build_judge(name: str, *, base_model, tokenizer, **options) -> PersonaJudge:
    """A registered judge by name; ``base_model``/``tokenizer`` are the frozen base the likelihood judge scores with."""
    return JUDGES.get(name)(base_model=base_model, tokenizer=tokenizer, **options)
