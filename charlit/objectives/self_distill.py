"""On-policy self-distillation: the student samples from the bare prompt, the teacher is the same network
with the constitution as teacher-only context, and the loss is the per-token β-divergence over the full
vocabulary (default ``beta=1``: reverse KL ``KL(q‖p)``), normalised over the global batch's response tokens."""
from __future__ import annotations

import time

from charlit.data.chat import render_prompt_ids, student_messages
from charlit.kernels import fused_linear_divergence
from charlit.models.heads import lm_head
from charlit.objectives.base import CharacterObjective, sampling_params
from charlit.objectives.registry import register
from charlit.objectives.sequences import response_hidden
from charlit.teachers import build_teacher


@register("self_distill")
class SelfDistill(CharacterObjective):
    data_kind = "prompts"

    def __init__(self, ctx):
        super().__init__(ctx)
        method = self.method_cfg
        self.teacher = build_teacher(ctx.cfg.teacher, self.policy, self.reference, self.tokenizer,
                                     self.constitution, weights=str(method.teacher_weights))
        self.train_sampling = sampling_params(ctx.cfg.sampler)

    def sample(self, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """The student's contexts and on-policy responses (seeded by step, so a resumed run repeats them)."""
        contexts = [render_prompt_ids(self.tokenizer, student_messages(p)) for p in prompts]
        seed = int(self.run_cfg.seed) * 100_003 + int(self.global_step)
        responses = self.sampler.generate(self.policy, contexts, self.train_sampling, seed=seed)
        return contexts, responses

    def compute_loss(self, batch):
        prompts = list(batch)
        t0 = time.perf_counter()
        contexts, responses = self.sample(prompts)
        gen_time = time.perf_counter() - t0
        n_tokens = sum(len(r) for r in responses)
        teacher = self.teacher.score(prompts, responses)
        student = response_hidden(self.policy, contexts, responses, self.tokenizer.pad_token_id)
        head = lm_head(self.policy)
        method = self.method_cfg
        loss = fused_linear_divergence(
            student, head.weight, teacher.hidden, teacher.weight,
            beta=float(method.beta), temperature=float(method.temperature), scale_by_t2=bool(method.scale_by_t2),
            num_items=self.global_num_items(n_tokens), student_bias=head.bias, teacher_bias=teacher.bias,
            softcap=head.softcap,
        )
        metrics = {
            "divergence": loss.detach().item(),
            "response_len": n_tokens / max(len(responses), 1),
            "gen_tokens_per_s": n_tokens / max(gen_time, 1e-9),
        }
        return loss, metrics, n_tokens
