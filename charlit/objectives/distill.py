"""Off-policy distillation on fixed responses: the assistant turns of ``conversations`` data (written by a
teacher model, by hand, or by anyone), scored by the student (conversation without the constitution) and by
the teacher (with it: the ``teacher`` group picks self / fewshot / amplified / external).

Every assistant turn is one example: the conversation before it is the prompt, the turn the response.
Loss per response token (normalised over the global batch's response tokens)::

    D_β(p ‖ q)  +  ce_coef · (−log q_T=1(y_t))

with ``beta=0`` the forward KL ``KL(p‖q)`` over the full vocabulary (default; any β as in ``docs/design.md §2``)
at the loss temperature ``method.temperature``, and an optional hard-label cross-entropy on the data tokens
(always at temperature 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from charlit.kernels import fused_linear_logprobs
from charlit.models.sequences import response_targets
from charlit.objectives.registry import OBJECTIVES
from charlit.objectives.teacher_objective import DivergenceSettings, TeacherObjective
from charlit.settings import setting


@OBJECTIVES.register("distill")
class Distill(TeacherObjective):
    data_kind = "conversations"
    conversation_format = "all_turns"

    @dataclass
    class Config(DivergenceSettings):
        beta: float = setting(0.0, ge=0, le=1, help="0 forward KL(p||q) (default), 1 reverse KL(q||p)")
        ce_coef: float = setting(0.0, ge=0, help="weight of the cross-entropy on the data tokens; 0 = off")

    def compute_loss(self, batch):
        prompts = [e["prompt"] for e in batch]
        contexts = [e["context_ids"] for e in batch]
        responses = [e["response_ids"] for e in batch]
        scored = self.score(prompts, contexts, responses)
        divergence = self.divergence(scored)
        loss = divergence
        metrics = {"divergence": divergence.detach().item(), "response_len": scored.n_tokens / max(len(batch), 1)}
        if self.config.ce_coef > 0:
            targets = response_targets(responses, scored.student.device)
            logp = fused_linear_logprobs(
                scored.student, scored.head.weight, targets, bias=scored.head.bias, softcap=scored.head.softcap
            )
            ce = -logp.sum() / max(self.global_num_items(scored.n_tokens), 1.0)
            loss = loss + self.config.ce_coef * ce
            metrics["ce"] = ce.detach().item()
        return loss, metrics, scored.n_tokens
