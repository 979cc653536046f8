"""An external teacher: any Hugging Face causal LM (id or directory), or ``tiny`` with its own seed.

Logit-level objectives compare the teacher's and the student's distributions token by token, so both must
use the same token ids. This is checked up front (``tokenizer.get_vocab()`` on every id of the student's
tokenizer); a padded teacher vocabulary (more lm_head rows than tokens, e.g. 152064 vs 151936) is fine
because the fused ops ignore teacher rows beyond the student's. A true mismatch is refused unless
``teacher.cross_tokenizer=true``, which aligns both tokenizations on the text instead
(:mod:`charlit.teachers.cross_tokenizer`); the error names that mode and the text-level methods.

The teacher renders prompts with its own chat template (the constitution as system prompt unless
``teacher.use_constitution=false``), then scores the student's response tokens. It always runs its own
fixed weights under ``no_grad`` (``method.teacher_weights`` applies to same-network teachers only).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.models.heads import lm_head
from charlit.models.sequences import response_hidden
from charlit.settings import setting
from charlit.teachers.base import TEACHERS, Teacher, head_output
from charlit.teachers.cross_tokenizer import CrossTokenizer

TEXT_LEVEL_HINT = (
    "Logit-level methods (self_distill, distill, on_policy_distill) compare token ids: set "
    "teacher.cross_tokenizer=true to align the two tokenizations on the text instead (exact-match tokens keep the "
    "full divergence, the rest a sorted-probability distance), or use the teacher at the text level: have it write "
    "replies and train with method=sft on those conversations, or method=dpo on preference pairs built from them."
)


def vocabulary_mismatch(
    student_tokenizer, teacher_tokenizer, student_rows: int, teacher_rows: int, name: str
) -> str | None:
    """Why the teacher's token ids cannot be compared with the student's, or None when every student token id
    means the same token to the teacher."""
    student = {i: t for t, i in student_tokenizer.get_vocab().items()}
    teacher = {i: t for t, i in teacher_tokenizer.get_vocab().items()}
    differing = [i for i in sorted(student) if teacher.get(i) != student[i]]
    if differing:
        first = differing[0]
        return (
            f"teacher.name_or_path={name!r} uses a different tokenizer than the student: {len(differing)} of the "
            f"student's {len(student)} token ids differ (first: id {first} is {student[first]!r} for the student, "
            f"{teacher.get(first)!r} for the teacher; vocab sizes {len(student)} vs {len(teacher)}). {TEXT_LEVEL_HINT}"
        )
    if teacher_rows < student_rows:
        return (
            f"teacher.name_or_path={name!r} has {teacher_rows} lm_head rows but the student has {student_rows}; the "
            f"teacher must cover every student token id. {TEXT_LEVEL_HINT}"
        )
    return None


@TEACHERS.register("external")
class ExternalTeacher(Teacher):
    @dataclass
    class Config:
        name_or_path: str = setting(help="a Hugging Face id or directory, or `tiny` (random test model, see seed)")
        tokenizer: str | None = setting(None)
        chat_template: str | None = setting(None)
        dtype: str = setting("float32", help="as model.dtype")
        trust_remote_code: bool = setting(False)
        use_constitution: bool = setting(True, help="the constitution as the teacher's system prompt")
        seed: int = setting(1, help="name_or_path=tiny only: another seed gives other weights, same tokenizer")
        tiny: dict = setting({"hidden_size": 64, "num_layers": 2})
        cross_tokenizer: bool = setting(
            False, help="a teacher with another tokenizer: align both on the text (exact tokens + ULD on spans)"
        )
        top_k: int = setting(64, ge=1, help="cross_tokenizer: teacher ids kept per exact position and per span")
        uld_weight: float = setting(1.0, ge=0, help="cross_tokenizer: weight of the span (ULD) term")
        end_of_turn: str | None = setting(None, help="cross_tokenizer: the teacher token the student's EOS maps to")

    def __init__(
        self,
        policy,
        reference,
        tokenizer,
        constitution,
        model,
        teacher_tokenizer,
        name: str = "external",
        use_constitution: bool = True,
        cross_tokenizer: dict | None = None,
    ):
        super().__init__(policy, reference, tokenizer, constitution, weights="frozen")
        student_rows = lm_head(policy).weight.shape[0]
        mismatch = vocabulary_mismatch(tokenizer, teacher_tokenizer, student_rows, lm_head(model).weight.shape[0], name)
        if mismatch and cross_tokenizer is None:
            raise ValueError(mismatch)
        # the same token ids: the plain divergence is exact, no alignment needed
        self.cross = CrossTokenizer(tokenizer, teacher_tokenizer, **cross_tokenizer) if mismatch else None
        self.student_rows = student_rows
        self.model = model.eval().requires_grad_(False)
        self.teacher_tokenizer, self.name, self.use_constitution = teacher_tokenizer, name, use_constitution

    @classmethod
    def from_config(cls, config, policy, reference, tokenizer, constitution, weights="frozen", ema_decay=0.99):
        from charlit.models import load_model

        if weights != "frozen":
            raise ValueError(
                f"method.teacher_weights={weights!r} only applies to same-network teachers; teacher=external "
                f"always runs its own fixed weights: set method.teacher_weights=frozen."
            )
        model_cfg = OmegaConf.create(
            {
                "name_or_path": config.name_or_path,
                "tokenizer": config.tokenizer,
                "chat_template": config.chat_template,
                "dtype": config.dtype,
                "trust_remote_code": config.trust_remote_code,
                "seed": config.seed,
                "tiny": dict(config.tiny),
            }
        )
        loaded = load_model(model_cfg, apply_lora=False)
        return cls(
            policy,
            reference,
            tokenizer,
            constitution,
            loaded.model,
            loaded.tokenizer,
            name=config.name_or_path,
            use_constitution=config.use_constitution,
            cross_tokenizer=(
                {"k": config.top_k, "uld_weight": config.uld_weight, "end_of_turn": config.end_of_turn}
                if config.cross_tokenizer
                else None
            ),
        )

    @contextmanager
    def network(self):
        device = next(self.policy.parameters()).device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with torch.no_grad():
            yield self.model

    def to(self, device):
        self.model.to(device)
        return self

    def networks(self):
        return [self.model]

    def context_ids(self, prompt) -> list[int]:
        messages = teacher_messages(prompt, self.constitution) if self.use_constitution else student_messages(prompt)
        return render_prompt_ids(self.teacher_tokenizer, messages)

    def score(self, prompts, responses):
        contexts = [self.context_ids(p) for p in prompts]
        with self.network() as model:
            if self.cross is not None:
                return self.cross.score(model, contexts, responses, self.student_rows)
            hidden = response_hidden(model, contexts, responses, self.teacher_tokenizer.pad_token_id)
            return head_output(hidden, model)
