"""Off-policy distillation on fixed responses: the assistant turns of ``conversations`` data (written by a
teacher model, by hand, or by anyone), scored by the student (conversation without the constitution) and by
the teacher (with it: the ``teacher`` group picks self / fewshot / amplified / external).

Every assistant turn is one example: the conversation before it is the prompt, the turn the response.
Loss per response token (normalised over the global batch's response tokens)::

    D_β(p ‖ q)  +  ce_coef · (−log q_T=1(y_t))

with ``beta=0`` the forward KL ``KL(p‖q)`` over the full vocabulary (default; any β as in DESIGN §3) at the
loss temperature ``method.temperature``, and an optional hard-label cross-entropy on the data tokens
(always at temperature 1).
"""
from __future__ import annotations

from charlit.kernels import fused_linear_logprobs
from charlit.objectives.distillation import TeacherObjective
from charlit.objectives.registry import register
from charlit.objectives.sequences import response_targets


@register("distill")
class Distill(TeacherObjective):
    data_kind = "conversations"
    conversation_format = "all_turns"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ce_coef = float(self.method_cfg.get("ce_coef", 0.0))
        if self.ce_coef < 0:
            raise ValueError(f"method.ce_coef={self.ce_coef} must be >= 0 (0 disables the hard-label term).")

    def compute_loss(self, batch):
        prompts = [e["prompt"] for e in batch]
        contexts = [e["context_ids"] for e in batch]
        responses = [e["response_ids"] for e in batch]
        scored = self.score(prompts, contexts, responses)
        divergence = self.divergence(scored)
        loss = divergence
        metrics = {"divergence": divergence.detach().item(), "response_len": scored.n_tokens / max(len(batch), 1)}
        if self.ce_coef > 0:
            targets = response_targets(responses, scored.student.device)
            logp = fused_linear_logprobs(scored.student, scored.head.weight, targets, bias=scored.head.bias,
                                         softcap=scored.head.softcap)
            ce = -logp.sum() / max(self.global_num_items(scored.n_tokens), 1.0)
            loss = loss + self.ce_coef * ce
            metrics["ce"] = ce.detach().item()
        return loss, metrics, scored.n_tokens
