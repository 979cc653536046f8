"""On-policy distillation (GKD, Agarwal et al. 2024) with the constitution-conditioned teacher.

Each optimizer step is on-policy with probability ``lmbda`` (GKD's λ): a Bernoulli draw that is a
deterministic function of ``seed`` and the global step (a resumed run repeats it). On-policy steps score
the student's own samples of the batch prompts (``sampler.temperature``); the other steps score the fixed
responses from the data. The teacher scores every response position.

Data: ``conversations`` (default) — the prompt is the conversation up to its last assistant turn and the
fixed response is that turn; with ``lmbda=1`` no fixed responses are needed and ``data=prompts`` works too.

``estimator``:
  * ``full`` (default): per response token the β-divergence over the full vocabulary (``beta=1`` reverse
    KL ``KL(q‖p)``; 0 forward; otherwise generalized JSD) at the loss temperature ``method.temperature``.
  * ``sampled_token``: a REINFORCE-style estimate of reverse KL from the response tokens only: with
    ``a_t = sg(log q(y_t) − log p(y_t))``, loss = mean over tokens of ``a_t · log q(y_t)`` (both log-probs
    from ``fused_linear_logprobs`` at ``method.temperature``). On on-policy samples its gradient is an
    unbiased estimate of ``∇ KL(q‖p)``; on fixed data responses it is off-policy (biased). The logged
    ``kl_estimate`` is the mean of ``a_t``; the loss value itself is a surrogate, not a divergence.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from charlit.kernels import fused_linear_logprobs
from charlit.models.sequences import response_targets
from charlit.objectives.registry import OBJECTIVES
from charlit.objectives.teacher_objective import OnPolicySettings, Rollouts, TeacherObjective
from charlit.settings import setting

ESTIMATORS = ("full", "sampled_token")


def on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """GKD's per-step coin: True with probability ``lmbda``, a pure function of (seed, step)."""
    return random.Random(int(seed) * 1_000_003 + int(step)).random() < float(lmbda)


@OBJECTIVES.register("on_policy_distill")
class OnPolicyDistill(TeacherObjective):
    data_kind = "conversations"
    data_kinds = ("conversations", "prompts")
    conversation_format = "last_turn"

    @dataclass
    class Config(OnPolicySettings):
        lmbda: float = setting(0.5, ge=0, le=1, help="fraction of on-policy steps (a coin per step from the seed)")
        estimator: str = setting("full", choices=ESTIMATORS)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.lmbda, self.estimator = config.lmbda, config.estimator
        if ctx.data_kind == "prompts" and self.lmbda < 1.0:
            raise ValueError(
                f"method.lmbda={self.lmbda} mixes in fixed responses, which data=prompts does not have; "
                f"use data=conversations or set method.lmbda=1 (always on-policy)."
            )

    def compute_loss(self, batch):
        if batch and isinstance(batch[0], str):
            prompts, contexts, fixed = list(batch), self.student_contexts(list(batch)), None
        else:
            prompts = [e["prompt"] for e in batch]
            contexts = [e["context_ids"] for e in batch]
            fixed = [e["response_ids"] for e in batch]
        on_policy = fixed is None or on_policy_step(self.ctx.seed, int(self.global_step), self.lmbda)
        metrics = {"on_policy": float(on_policy)}
        if on_policy:
            t0 = time.perf_counter()
            rollouts = self.sample(contexts)
            metrics["looping_frac"] = rollouts.looping
            metrics["gen_tokens_per_s"] = sum(map(len, rollouts.responses)) / max(time.perf_counter() - t0, 1e-9)
        else:
            rollouts = Rollouts(fixed, 0.0)  # fixed data: off-policy by design, weighted 1
        responses = rollouts.responses
        scored = self.score(prompts, contexts, responses)
        # the sampled-token estimator's loss is on the drawn token itself, so its weight includes that token's ratio
        weights, weight_metrics = self.off_policy_weights(scored, rollouts, through_token=self.estimator != "full")
        metrics |= weight_metrics
        if self.estimator == "full":
            loss, divergence_metrics = self.distill_loss(scored, responses, weights)
            metrics |= divergence_metrics
        else:
            loss, kl = self.sampled_token_loss(scored, responses, weights)
            metrics["kl_estimate"] = kl
        metrics["response_len"] = scored.n_tokens / max(len(responses), 1)
        return loss, metrics, scored.n_tokens

    def sampled_token_loss(self, scored, responses, weights=None):
        temperature = self.config.temperature
        targets = response_targets(responses, scored.student.device)
        head, teacher = scored.head, self.full_teacher(scored, "method.estimator=sampled_token")
        vocab = head.weight.shape[0]  # a padded teacher vocabulary: its rows beyond the student's are ignored
        log_q = fused_linear_logprobs(
            scored.student, head.weight, targets, temperature=temperature, bias=head.bias, softcap=head.softcap
        )
        log_p = fused_linear_logprobs(
            teacher.hidden,
            teacher.weight[:vocab],
            targets,
            temperature=temperature,
            bias=None if teacher.bias is None else teacher.bias[:vocab],
            softcap=teacher.softcap,
        )
        advantage = (log_q - log_p).detach()
        per_token = advantage * log_q if weights is None else weights * advantage * log_q
        loss = per_token.sum() / max(self.global_num_items(scored.n_tokens), 1.0)
        return loss, advantage.mean().item() if advantage.numel() else 0.0
