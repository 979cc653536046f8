"""On-policy self-distillation: the student samples from the bare prompt, the teacher is the same network
with the constitution as teacher-only context (or a stronger teacher from the ``teacher`` group), and the
loss is the per-token β-divergence over the full vocabulary (default ``beta=1``: reverse KL ``KL(q‖p)``),
normalised over the global batch's response tokens. ``teacher_weights``: ``frozen``, ``live`` or ``ema``
(decay ``ema_decay``, updated after every optimizer step)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from charlit.objectives.registry import OBJECTIVES
from charlit.objectives.teacher_objective import OnPolicySettings, TeacherObjective
from charlit.settings import setting


@OBJECTIVES.register("self_distill")
class SelfDistill(TeacherObjective):
    data_kind = "prompts"

    @dataclass
    class Config(OnPolicySettings):
        """The student learns the teacher's persona but not its loops: half the rollouts greedy (where loops show)
        and a repetition-penalised reverse-KL target (docs/measured.md, "Repetition-penalised teacher target")."""

        greedy_rollouts: float = setting(0.5, ge=0, le=1, help="share of each batch's prompts decoded greedily")
        repeat_penalty: float = setting(
            3.0, ge=0, help="nats off the teacher's logit of each token that would repeat an earlier n-gram"
        )
        repeat_penalty_n: int = setting(2, ge=1, help="the n of that n-gram (1: every token seen before)")

    def compute_loss(self, batch):
        prompts = list(batch)
        contexts = self.student_contexts(prompts)
        t0 = time.perf_counter()
        rollouts = self.sample(contexts)
        gen_time = time.perf_counter() - t0
        scored = self.score(prompts, contexts, rollouts.responses)
        weights, metrics = self.off_policy_weights(scored, rollouts)
        loss, loss_metrics = self.distill_loss(scored, rollouts.responses, weights)
        n_tokens = scored.n_tokens
        metrics |= loss_metrics | {
            "response_len": n_tokens / max(len(rollouts.responses), 1),
            "gen_tokens_per_s": n_tokens / max(gen_time, 1e-9),
            "looping_frac": rollouts.looping,
        }
        return loss, metrics, n_tokens
