"""An external teacher: any Hugging Face causal LM (id or directory), or ``tiny`` with its own seed.

Logit-level objectives compare the teacher's and the student's distributions token by token, so both must
use the same token ids. This is checked up front (``tokenizer.get_vocab()`` on every id of the student's
tokenizer); a padded teacher vocabulary (more lm_head rows than tokens, e.g. 152064 vs 151936) is fine
because the fused ops ignore teacher rows beyond the student's. A true mismatch is refused with an error
that names the text-level methods which still work with such a teacher.

The teacher renders prompts with its own chat template (the constitution as system prompt unless
``teacher.use_constitution=false``), then scores the student's response tokens. It always runs its own
fixed weights under ``no_grad`` (``method.teacher_weights`` applies to same-network teachers only).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from omegaconf import OmegaConf

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.models.heads import lm_head
from charlit.objectives.sequences import response_hidden
from charlit.teachers.base import Teacher, head_output

TEXT_LEVEL_HINT = ("Logit-level methods (self_distill, distill, on_policy_distill) need the same token ids; with a "
                   "different tokenizer the teacher can still be used at the text level: have it write replies and train "
                   "with method=sft on those conversations, or with method=dpo on preference pairs built from them.")


def check_same_vocabulary(student_tokenizer, teacher_tokenizer, student_rows: int, teacher_rows: int, name: str) -> None:
    """Raise ``ValueError`` unless every student token id means the same token to the teacher."""
    student = {i: t for t, i in student_tokenizer.get_vocab().items()}
    teacher = {i: t for t, i in teacher_tokenizer.get_vocab().items()}
    differing = [i for i in sorted(student) if teacher.get(i) != student[i]]
    if differing:
        first = differing[0]
        raise ValueError(
            f"teacher.name_or_path={name!r} uses a different tokenizer than the student: {len(differing)} of the "
            f"student's {len(student)} token ids differ (first: id {first} is {student[first]!r} for the student, "
            f"{teacher.get(first)!r} for the teacher; vocab sizes {len(student)} vs {len(teacher)}). {TEXT_LEVEL_HINT}")
    if teacher_rows < student_rows:
        raise ValueError(
            f"teacher.name_or_path={name!r} has {teacher_rows} lm_head rows but the student has {student_rows}; the "
            f"teacher must cover every student token id. {TEXT_LEVEL_HINT}")


class ExternalTeacher(Teacher):
    def __init__(self, policy, reference, tokenizer, constitution, model, teacher_tokenizer, name: str = "external",
                 use_constitution: bool = True):
        super().__init__(policy, reference, tokenizer, constitution, weights="frozen")
        check_same_vocabulary(tokenizer, teacher_tokenizer, lm_head(policy).weight.shape[0],
                              lm_head(model).weight.shape[0], name)
        self.model = model.eval().requires_grad_(False)
        self.teacher_tokenizer, self.name, self.use_constitution = teacher_tokenizer, name, use_constitution

    @classmethod
    def from_config(cls, cfg, policy, reference, tokenizer, constitution, weights="frozen", ema_decay=0.99):
        from charlit.models import load_model

        if weights != "frozen":
            raise ValueError(f"method.teacher_weights={weights!r} only applies to same-network teachers; teacher=external "
                             f"always runs its own fixed weights: set method.teacher_weights=frozen.")
        name = cfg.get("name_or_path")
        if not name or name == "???":
            raise ValueError("teacher=external needs teacher.name_or_path: a Hugging Face id or directory, "
                             "or `tiny` (with teacher.seed) for a randomly initialised test teacher.")
        model_cfg = OmegaConf.create({
            "name_or_path": str(name), "tokenizer": cfg.get("tokenizer"), "chat_template": cfg.get("chat_template"),
            "dtype": cfg.get("dtype", "float32"), "trust_remote_code": bool(cfg.get("trust_remote_code", False)),
            "seed": int(cfg.get("seed", 1)), "tiny": OmegaConf.to_container(cfg.tiny) if cfg.get("tiny") else {},
        })
        loaded = load_model(model_cfg, apply_lora=False)
        return cls(policy, reference, tokenizer, constitution, loaded.model, loaded.tokenizer, name=str(name),
                   use_constitution=bool(cfg.get("use_constitution", True)))

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

    def context_ids(self, prompt) -> list[int]:
        messages = teacher_messages(prompt, self.constitution) if self.use_constitution else student_messages(prompt)
        return render_prompt_ids(self.teacher_tokenizer, messages)

    def score(self, prompts, responses):
        contexts = [self.context_ids(p) for p in prompts]
        with self.network() as model:
            hidden = response_hidden(model, contexts, responses, self.teacher_tokenizer.pad_token_id)
            return head_output(hidden, model)
