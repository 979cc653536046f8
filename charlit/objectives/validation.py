"""Held-out validation shared by every objective, so runs of different methods compare on one panel.

On held-out prompts the student samples replies from the bare prompt (fixed seeds, so the start and end
of a run see the same randomness), then:

* ``val/divergence``: the divergence (``beta``; default reverse KL) between the student and the frozen
  base conditioned on the constitution, per response token;
* ``val/persona_gain``: the likelihood judge's gain of the student's replies (see
  :mod:`charlit.eval.likelihood_judge`), with the bare base's and the constitution-prompted base's
  replies scored once as ``val/persona_gain_bare`` and ``val/persona_gain_prompted``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.eval.likelihood_judge import persona_gain
from charlit.kernels import fused_linear_divergence
from charlit.models.heads import lm_head
from charlit.models.modes import eval_mode
from charlit.models.sequences import response_hidden
from charlit.sampling import SamplingParams
from charlit.settings import setting
from charlit.teachers.self import SelfTeacher


@dataclass
class ValidationSettings:
    """The ``val`` block of conf/train.yaml."""
    every_n_steps: int = setting(10, ge=0, help="0 = no validation")
    beta: float = setting(1.0, ge=0, le=1)
    temperature: float = setting(1.0, gt=0)
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def from_config(cls, node) -> "ValidationSettings":
        from charlit.settings import parse

        sampling = SamplingParams.from_config(node.get("sampling", {}), "val.sampling")
        settings = parse(cls, {k: v for k, v in node.items() if k != "sampling"}, "val")
        settings.sampling = sampling
        return settings


@dataclass
class BatchResult:
    divergence_sum: float
    tokens: int
    gains: torch.Tensor
    samples: list[dict]
    baseline_gains: dict[str, torch.Tensor] = field(default_factory=dict)


class HeldOutValidation:
    def __init__(self, policy, reference, tokenizer, constitution, sampler, settings: ValidationSettings,
                 seed: int = 1234):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.constitution, self.sampler, self.params = constitution, sampler, settings.sampling
        self.beta, self.temperature, self.seed = settings.beta, settings.temperature, seed
        self.teacher = SelfTeacher(policy, reference, tokenizer, constitution, weights="frozen")
        self.prompted_replies: dict[str, str] = {}   # prompt -> the prompted base's reply, for sample tables

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def run_batch(self, prompts: list[str], batch_idx: int, with_baselines: bool) -> BatchResult:
        seed = self.seed + batch_idx
        bare_ctx = [render_prompt_ids(self.tokenizer, student_messages(p)) for p in prompts]
        replies = self.sampler.generate(self.policy, bare_ctx, self.params, seed=seed, desc="val generate")

        teacher = self.teacher.score(prompts, replies)
        with eval_mode(self.policy):
            student_hidden = response_hidden(self.policy, bare_ctx, replies, self.tokenizer.pad_token_id)
            head = lm_head(self.policy)
        tokens = student_hidden.shape[0]
        div_sum = fused_linear_divergence(
            student_hidden, head.weight, teacher.hidden, teacher.weight, beta=self.beta, temperature=self.temperature,
            reduction="sum", student_bias=head.bias, teacher_bias=teacher.bias, softcap=head.softcap,
        ).item() if tokens else 0.0

        baselines = {}
        with self.reference.model() as base:
            gains = persona_gain(base, self.tokenizer, self.constitution, prompts, replies)
            if with_baselines:
                bare_replies = self.sampler.generate(base, bare_ctx, self.params, seed=seed, desc="val bare base")
                prompted_ctx = [render_prompt_ids(self.tokenizer, teacher_messages(p, self.constitution)) for p in prompts]
                prompted_replies = self.sampler.generate(base, prompted_ctx, self.params, seed=seed, desc="val prompted base")
                baselines["bare"] = persona_gain(base, self.tokenizer, self.constitution, prompts, bare_replies)
                baselines["prompted"] = persona_gain(base, self.tokenizer, self.constitution, prompts, prompted_replies)
                self.prompted_replies.update({p: self._decode(r) for p, r in zip(prompts, prompted_replies)})

        samples = [{"prompt": p, "student": self._decode(r), "teacher": self.prompted_replies.get(p, "")}
                   for p, r in zip(prompts, replies)]
        return BatchResult(div_sum, tokens, gains, samples, baselines)
