"""The teacher interface: hidden states aligned with the student's response tokens plus the head to apply.

Teachers return hidden states and an lm_head, never logits, so every objective feeds them straight into
the fused divergence op. ``weights`` picks which parameters a same-network teacher runs with:
``frozen`` (the starting model: with LoRA the adapter disabled) or ``live`` (current weights, no grad).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charlit.data.chat import render_prompt_ids, teacher_messages
from charlit.data.constitution import Constitution
from charlit.models.heads import lm_head
from charlit.models.reference import FrozenReference
from charlit.objectives.sequences import response_hidden

TEACHER_WEIGHTS = ("frozen", "live")


@dataclass
class TeacherOutput:
    hidden: torch.Tensor            # [N, H], no grad
    weight: torch.Tensor            # [V, H]
    bias: torch.Tensor | None
    softcap: float | None


class Teacher(ABC):
    def __init__(self, policy, reference: FrozenReference, tokenizer, constitution: Constitution, weights: str = "frozen"):
        if weights not in TEACHER_WEIGHTS:
            raise ValueError(f"teacher weights={weights!r} is not valid; choose one of {', '.join(TEACHER_WEIGHTS)}.")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.constitution, self.weights = constitution, weights

    @contextmanager
    def network(self):
        """The module the teacher runs: the frozen reference or the live policy, always without gradients."""
        with torch.no_grad():
            if self.weights == "frozen":
                with self.reference.model() as model:
                    yield model
            else:
                was_training = self.policy.training
                self.policy.eval()
                try:
                    yield self.policy
                finally:
                    self.policy.train(was_training)

    def context_ids(self, prompt: str) -> list[int]:
        """The teacher's rendered context for a user prompt (the constitution as system prompt by default)."""
        return render_prompt_ids(self.tokenizer, teacher_messages(prompt, self.constitution))

    @abstractmethod
    def score(self, prompts: list[str], responses: list[list[int]]) -> TeacherOutput:
        ...


class SelfTeacher(Teacher):
    """The student network itself with the constitution as teacher-only system prompt."""

    def score(self, prompts, responses):
        contexts = [self.context_ids(p) for p in prompts]
        with self.network() as model:
            hidden = response_hidden(model, contexts, responses, self.tokenizer.pad_token_id)
            head = lm_head(model)
            return TeacherOutput(hidden=hidden.detach(), weight=head.weight.detach(),
                                 bias=None if head.bias is None else head.bias.detach(), softcap=head.softcap)


TEACHERS = {"self": SelfTeacher}


def build_teacher(cfg, policy, reference, tokenizer, constitution, weights: str = "frozen") -> Teacher:
    name = cfg.get("name", "self")
    if name not in TEACHERS:
        raise ValueError(f"teacher={name!r} is not available; valid choices: {', '.join(sorted(TEACHERS))}.")
    return TEACHERS[name](policy, reference, tokenizer, constitution, weights=weights)
