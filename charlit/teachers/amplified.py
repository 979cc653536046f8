"""The amplified teacher: contrast the teacher with and without the constitution, ``t_ctx + α(t_ctx − t_bare)``.

Teacher and student share the lm_head and logits are linear in the final hidden state
(``t = W·h + b``), so the amplified logits are the head applied to one combined hidden state::

    W·((1+α)·h_ctx − α·h_bare) + b  =  (1+α)·t_ctx − α·t_bare  =  t_ctx + α·(t_ctx − t_bare)

(the bias is unchanged: ``(1+α)·b − α·b = b``). ``h_ctx`` is the teacher network's hidden state with the
constitution in context, ``h_bare`` the same network's on the student's bare prompt, both at the positions
predicting each response token, so the fused divergence op still never builds ``[tokens, vocab]``.
``α = 0`` is exactly ``teacher=self``; ``α > 0`` sharpens what the constitution changes (α < 0 is refused).
A soft-capped head (``softcap·tanh(z/softcap)``) is not linear, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from charlit.models.heads import lm_head
from charlit.models.sequences import response_hidden
from charlit.settings import setting
from charlit.teachers.base import TEACHERS, head_output
from charlit.teachers.self import SelfTeacher


@TEACHERS.register("amplified")
class AmplifiedTeacher(SelfTeacher):
    @dataclass
    class Config:
        alpha: float = setting(1.0, ge=0, help="0 = teacher=self; larger pushes further from the bare network")

    def __init__(self, *args, alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)
        softcap = lm_head(self.policy).softcap
        if softcap:
            raise ValueError(
                f"teacher=amplified needs logits linear in the hidden state, but this model soft-caps its "
                f"logits (final_logit_softcapping={softcap}); use teacher=self or teacher=fewshot."
            )

    @classmethod
    def from_config(cls, config, *args, **weights):
        return cls(*args, alpha=config.alpha, **weights)

    def score(self, prompts, responses):
        ctx = [self.context_ids(p) for p in prompts]
        bare = [self.bare_context_ids(p) for p in prompts]
        pad = self.tokenizer.pad_token_id
        with self.network() as model:
            h_ctx = response_hidden(model, ctx, responses, pad, prefix_kv=self.prefix_kv())
            if self.alpha == 0.0:
                return head_output(h_ctx, model)
            h_bare = response_hidden(model, bare, responses, pad, prefix_kv=self.prefix_kv("bare"))
            return head_output((1.0 + self.alpha) * h_ctx - self.alpha * h_bare, model)
