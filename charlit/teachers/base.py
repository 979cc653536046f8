"""The teacher interface: hidden states aligned with the student's response tokens plus the head to apply.

Teachers return hidden states and an lm_head, never logits, so every objective feeds them straight into
the fused divergence op. A prompt is a string (one user turn) or a conversation so far (a message list
ending with a user turn); responses are token ids, scored after the teacher's own rendering of the prompt.

``weights`` picks which parameters a same-network teacher runs with, always under ``no_grad`` and
sharing the policy's weights (no copy): ``frozen`` (the starting model: with LoRA the adapter disabled;
with full fine-tuning the frozen reference copy the base class keeps anyway), ``live`` (current weights)
or ``ema`` (an exponential moving average of the trainable parameters, see :mod:`charlit.teachers.ema`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.data.constitution import Constitution
from charlit.models.frozen import FrozenReference
from charlit.models.heads import PrefixKV, lm_head
from charlit.models.modes import eval_mode
from charlit.registry import Registry
from charlit.settings import parse
from charlit.teachers.ema import EmaWeights

TEACHER_WEIGHTS = ("frozen", "live", "ema")
TEACHERS = Registry("teacher", package="charlit.teachers", group="charlit.teachers", option="teacher")


@dataclass
class TeacherOutput:
    hidden: torch.Tensor  # [N, H], no grad
    weight: torch.Tensor  # [V, H]
    bias: torch.Tensor | None
    softcap: float | None


@dataclass
class TopKTeacherOutput:
    """A teacher known only by its top-k next-token log-probs and the log of the mass left outside them (cached
    teachers); objectives send it to :func:`charlit.kernels.fused_linear_topk_divergence`."""

    ids: torch.Tensor  # [N, k] int64
    logprobs: torch.Tensor  # [N, k] fp32, temperature 1
    tail: torch.Tensor  # [N] fp32: log(1 - sum of the top-k probabilities)


def head_output(hidden: torch.Tensor, model) -> TeacherOutput:
    """Package teacher hidden states with ``model``'s lm_head, all detached."""
    head = lm_head(model)
    return TeacherOutput(
        hidden=hidden.detach(),
        weight=head.weight.detach(),
        bias=None if head.bias is None else head.bias.detach(),
        softcap=head.softcap,
    )


class Teacher(ABC):
    """A registered teacher declares its settings as a nested ``Config`` dataclass (the ``teacher`` group minus
    ``name``) and is built by :meth:`from_config`."""

    @dataclass
    class Config:
        """No settings."""

    @classmethod
    def from_config(
        cls, config, policy, reference: FrozenReference, tokenizer, constitution: Constitution, **weights
    ) -> Teacher:
        """Build from the parsed ``Config``; ``weights``: ``weights=`` and ``ema_decay=`` as :meth:`__init__` takes."""
        return cls(policy, reference, tokenizer, constitution, **weights)

    def __init__(
        self,
        policy,
        reference: FrozenReference,
        tokenizer,
        constitution: Constitution,
        weights: str = "frozen",
        ema_decay: float = 0.99,
    ):
        if weights not in TEACHER_WEIGHTS:
            raise ValueError(f"teacher weights={weights!r} is not valid; choose one of {', '.join(TEACHER_WEIGHTS)}.")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.constitution, self.weights = constitution, weights
        self.ema = EmaWeights(policy, ema_decay) if weights == "ema" else None
        # frozen weights: the shared context prefix (constitution, exemplars) is encoded once per run
        self._prefix_kv = {}

    def prefix_kv(self, role: str = "context") -> PrefixKV | None:
        """The cross-step prefix cache for one kind of context, or None when the weights move (live, ema)."""
        if self.weights != "frozen":
            return None
        return self._prefix_kv.setdefault(role, PrefixKV())

    @contextmanager
    def network(self):
        """The module the teacher runs (frozen reference, live policy or EMA-swapped policy), without gradients."""
        with torch.no_grad():
            if self.weights == "frozen":
                with self.reference.model() as model:
                    yield model
                return
            with eval_mode(self.policy):
                if self.ema is not None:
                    with self.ema.swapped():
                        yield self.policy
                else:
                    yield self.policy

    def context_ids(self, prompt) -> list[int]:
        """The teacher's rendered context for a prompt (the constitution as system prompt by default)."""
        return render_prompt_ids(self.tokenizer, teacher_messages(prompt, self.constitution))

    def bare_context_ids(self, prompt) -> list[int]:
        """The student's rendering of the same prompt (no constitution)."""
        return render_prompt_ids(self.tokenizer, student_messages(prompt))

    def to(self, device) -> Teacher:
        """Move anything the teacher owns (same-network teachers own nothing)."""
        return self

    def networks(self) -> list[torch.nn.Module]:
        """The models the teacher owns (same-network teachers: none), for the compute accounting."""
        return []

    @abstractmethod
    def score(self, prompts: list, responses: list[list[int]]) -> TeacherOutput: ...


def teacher_factory(cfg):
    """A builder for the teacher the ``teacher`` group describes, its settings checked now (before any model loads):
    call it as ``(policy, reference, tokenizer, constitution, weights=..., ema_decay=...)``."""
    cls = TEACHERS.get(cfg.get("name", "self"))
    config = parse(cls.Config, cfg, "teacher")

    def build(policy, reference, tokenizer, constitution, weights: str = "frozen", ema_decay: float = 0.99) -> Teacher:
        return cls.from_config(config, policy, reference, tokenizer, constitution, weights=weights, ema_decay=ema_decay)

    return build
