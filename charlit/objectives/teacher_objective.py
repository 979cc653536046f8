"""Shared machinery for objectives that learn from a teacher's next-token distributions
(``self_distill``, ``distill``, ``on_policy_distill``): building the teacher, rendering the student's
contexts, on-policy sampling, scoring one set of responses with both networks, the fused divergence, and
the EMA teacher's bookkeeping (update after every optimizer step, saved in Lightning checkpoints), and the
truncated importance weights that correct samples decoded from other weights than the learner's (bf16 copies:
``sampler.precision``, :mod:`charlit.sampling.precision`).

Their shared settings are :class:`DivergenceSettings`: ``beta`` (0 forward KL ``KL(p‖q)``, 1 reverse KL
``KL(q‖p)``, else generalized JSD), ``temperature`` (the loss temperature; sampling uses
``sampler.temperature``), ``scale_by_t2``, ``teacher_weights`` (``frozen`` | ``live`` | ``ema``) and ``ema_decay``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from charlit.data.chat import render_prompt_ids, student_messages
from charlit.kernels import fused_linear_divergence, fused_linear_logprobs, fused_linear_topk_divergence
from charlit.kernels.cross_tokenizer import cross_tokenizer_divergence
from charlit.models.heads import LMHead, lm_head
from charlit.models.sequences import response_hidden, response_targets
from charlit.objectives.base import CharacterObjective
from charlit.quality import copy_candidates, loop_span, repeat_positions
from charlit.settings import setting
from charlit.teachers import TeacherOutput, TopKTeacherOutput
from charlit.teachers.base import TEACHER_WEIGHTS
from charlit.teachers.cross_tokenizer import CrossTokenizerTeacherOutput


@dataclass
class DivergenceSettings:
    beta: float = setting(1.0, ge=0, le=1, help="0 forward KL(p||q), 1 reverse KL(q||p), else generalized JSD")
    temperature: float = setting(1.0, gt=0, help="loss temperature (sampling has sampler.temperature)")
    scale_by_t2: bool = setting(False)
    teacher_weights: str = setting("frozen", choices=TEACHER_WEIGHTS)
    ema_decay: float = setting(0.99, ge=0, lt=1, help="teacher_weights=ema: ema <- decay*ema + (1-decay)*param")


@dataclass
class OnPolicySettings(DivergenceSettings):
    """Settings of objectives that train on the student's own samples."""

    loop_mask: bool = setting(False, help="cut each sample where it starts to loop (charlit.quality's rule)")
    unlikelihood: float = setting(
        0.0, ge=0, help="weight of repetition unlikelihood on sampled tokens that repeat an earlier n-gram"
    )
    unlikelihood_n: int = setting(4, ge=1, help="the n of that repeated n-gram")
    greedy_rollouts: float = setting(
        0.0, ge=0, le=1, help="share of each batch's prompts decoded greedily instead of sampled (loops show there)"
    )
    repeat_penalty: float = setting(
        0.0, ge=0, help="nats off the teacher's logit of each token that would repeat an earlier n-gram of the sample"
    )
    repeat_penalty_n: int = setting(3, ge=1, help="the n of that n-gram (1: every token seen before)")
    importance_cap: float = setting(
        2.0, ge=1, help="truncation of the importance weights on samples decoded from bf16 weights (sampler.precision)"
    )

    def check(self, prefix: str) -> None:
        if self.repeat_penalty and (self.beta != 1 or self.temperature != 1):
            raise ValueError(
                f"{prefix}.repeat_penalty={self.repeat_penalty} reshapes a reverse-KL target at loss temperature 1, "
                f"but {prefix}.beta={self.beta} and {prefix}.temperature={self.temperature}; set {prefix}.beta=1 "
                f"{prefix}.temperature=1, or {prefix}.repeat_penalty=0."
            )
        estimator = getattr(self, "estimator", "full")
        if estimator != "full" and (self.repeat_penalty or self.unlikelihood):
            raise ValueError(
                f"{prefix}.repeat_penalty and {prefix}.unlikelihood act on the full-vocabulary divergence, but "
                f"{prefix}.estimator={estimator}; set {prefix}.estimator=full or turn them off."
            )


@dataclass
class Rollouts:
    """The student's responses to one batch and the share of them that loop. ``logprobs``: when decoding ran from other
    weights than the learner's (bf16 copies), each drawn token's log-probability under those weights, per response
    (None for a greedy response); None when the samples are exactly on-policy."""

    responses: list[list[int]]
    looping: float
    logprobs: list[list[float] | None] | None = None


@dataclass
class Scored:
    """One batch of responses seen by both networks, row-aligned (example-major response tokens)."""

    student: torch.Tensor  # [N, H] student hidden states (with grad)
    head: LMHead  # the student's lm_head
    # [N, H] hidden states + head, cached top-k rows, or a cross-tokenizer teacher's aligned rows; no grad
    teacher: TeacherOutput | TopKTeacherOutput | CrossTokenizerTeacherOutput
    n_tokens: int


class TeacherObjective(CharacterObjective):
    Config = DivergenceSettings

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        if ctx.teacher is None:
            raise ValueError(f"method={self.name} learns from a teacher, but the run built none; set teacher=<name>.")
        self.teacher = ctx.teacher(
            self.policy,
            self.reference,
            self.tokenizer,
            self.constitution,
            weights=config.teacher_weights,
            ema_decay=config.ema_decay,
        )
        self._ema_step = 0

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.teacher.to(self.device)

    # ---- the student's side ----------------------------------------------------------------
    def student_contexts(self, prompts: list) -> list[list[int]]:
        """The student's rendering of each prompt (a string or a message list): never the constitution."""
        return [render_prompt_ids(self.tokenizer, student_messages(p)) for p in prompts]

    def sample(self, contexts: list[list[int]]) -> Rollouts:
        """On-policy responses to ``contexts`` (seeded by step, so a resumed run repeats them) and the fraction that
        loop. The first ``greedy_rollouts`` share of the batch is decoded greedily, the rest sampled. With
        ``loop_mask`` a looping sample is cut where its loop completes (the start of the repeat that makes it a
        loop, at least one token kept), so the divergence never trains on the loop itself. When the sampler decodes
        from other weights than the learner's, the sampled responses come with their tokens' log-probabilities."""
        seed = self.ctx.seed * 100_003 + int(self.global_step)
        greedy = round(getattr(self.config, "greedy_rollouts", 0.0) * len(contexts))
        off_policy = self.sampler.off_policy(self.policy) and greedy < len(contexts)
        if off_policy and (self.ctx.sampling.top_p < 1 or self.ctx.sampling.top_k > 0):
            raise ValueError(
                f"the sampler decodes from bf16 weights, and its samples are reweighted to the fp32 learner, which "
                f"needs unfiltered sampling, but sampler.top_p={self.ctx.sampling.top_p} "
                f"sampler.top_k={self.ctx.sampling.top_k}; set sampler.top_p=1 sampler.top_k=0, or "
                f"sampler.precision=fp32."
            )
        responses, logprobs = [], [None] * greedy
        if greedy:
            params = replace(self.ctx.sampling, temperature=0.0)
            responses += self.sampler.generate(self.policy, contexts[:greedy], params, seed=seed)
        if greedy < len(contexts):
            rest = contexts[greedy:]
            if off_policy:
                drawn, drawn_logprobs = self.sampler.generate(
                    self.policy, rest, self.ctx.sampling, seed=seed, logprobs=True
                )
                logprobs += drawn_logprobs
            else:
                drawn = self.sampler.generate(self.policy, rest, self.ctx.sampling, seed=seed)
            responses += drawn
        spans = [loop_span(r) for r in responses]
        if getattr(self.config, "loop_mask", False):
            cut = [len(r) if at is None else max(at, 1) for r, at in zip(responses, spans)]
            responses = [r[:n] for r, n in zip(responses, cut)]
            logprobs = [None if lp is None else lp[:n] for lp, n in zip(logprobs, cut)]
        looping = sum(at is not None for at in spans) / max(len(spans), 1)
        return Rollouts(responses, looping, logprobs if off_policy else None)

    def off_policy_weights(
        self, scored: Scored, rollouts: Rollouts, through_token: bool = False
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Per-token truncated importance weights ``[N]`` for responses decoded from other weights than the learner's
        (None when ``rollouts`` are on-policy). The loss at position ``t`` is an expectation over the prefix
        ``y_<t``, which the sampler drew from ``q`` (bf16 weights) instead of the learner's ``p`` (fp32, at the sampling
        temperature), so it gets ``w_t = min(cap, Π_{s<t} p(y_s)/q(y_s))``; ``through_token`` includes ``s = t``
        (for a loss on the drawn token itself). Greedy responses keep weight 1."""
        if rollouts.logprobs is None:
            return None, {}
        responses, device, head = rollouts.responses, scored.student.device, scored.head
        with torch.no_grad():
            log_p = fused_linear_logprobs(
                scored.student.detach(),
                head.weight,
                response_targets(responses, device),
                temperature=self.ctx.sampling.temperature,
                bias=head.bias,
                softcap=head.softcap,
            )
        log_cap = math.log(self.config.importance_cap)
        log_w = torch.zeros(scored.n_tokens, device=device)
        gaps, offset = [], 0
        for response, log_q in zip(responses, rollouts.logprobs):
            span = slice(offset, offset + len(response))
            offset += len(response)
            if log_q is None or not response:
                continue
            gap = log_p[span] - torch.tensor(log_q, dtype=log_p.dtype, device=device)
            log_w[span] = gap.cumsum(0) - (0 if through_token else gap)
            gaps.append(gap)
        clipped = log_w > log_cap
        weights = log_w.clamp(max=log_cap).exp()
        gap = torch.cat(gaps) if gaps else torch.zeros(1, device=device)
        metrics = {
            "is_weight_mean": weights.mean().item() if scored.n_tokens else 1.0,
            "is_clipped_frac": clipped.float().mean().item() if scored.n_tokens else 0.0,
            "sampler_logprob_gap": gap.abs().mean().item(),
        }
        return weights, metrics

    # ---- both sides ------------------------------------------------------------------------
    def score(self, prompts: list, contexts: list[list[int]], responses: list[list[int]]) -> Scored:
        """Teacher (its own context for ``prompts``) and student (``contexts``) on the same response tokens."""
        teacher = self.teacher.score(prompts, responses)
        student = response_hidden(self.policy, contexts, responses, self.tokenizer.pad_token_id)
        return Scored(
            student=student, head=lm_head(self.policy), teacher=teacher, n_tokens=sum(len(r) for r in responses)
        )

    def divergence(
        self,
        scored: Scored,
        beta: float | None = None,
        rows: torch.Tensor | None = None,
        num_items: float | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The per-token β-divergence over the full vocabulary on ``rows`` (a bool mask; default all), each token
        times its entry of ``weights`` (default 1), normalised by ``num_items`` (default: the global batch's token
        count)."""
        if num_items is None:
            num_items = self.global_num_items(scored.n_tokens)
        if isinstance(scored.teacher, CrossTokenizerTeacherOutput):
            if weights is not None:
                raise ValueError(
                    "the sampler decodes from bf16 weights, so each sampled token's loss is reweighted, which a "
                    "cross-tokenizer teacher's span groups do not allow; set sampler.precision=fp32."
                )
            return self._cross_tokenizer_divergence(scored, beta, rows, num_items)
        by_token = {} if weights is None else {"reduction": "none"}
        if isinstance(scored.teacher, TopKTeacherOutput):
            loss = self._topk_divergence(scored, beta, rows, None if by_token else num_items, **by_token)
        else:
            loss = self._full_divergence(scored, beta, rows, None if by_token else num_items, **by_token)
        if weights is None:
            return loss
        return (loss * (weights if rows is None else weights[rows])).sum() / max(num_items, 1.0)

    def _full_divergence(self, scored: Scored, beta, rows, num_items, reduction: str = "mean") -> torch.Tensor:
        config = self.config
        student, teacher = scored.student, scored.teacher.hidden
        if rows is not None:
            student, teacher = student[rows], teacher[rows]
        return fused_linear_divergence(
            student,
            scored.head.weight,
            teacher,
            scored.teacher.weight,
            beta=config.beta if beta is None else beta,
            temperature=config.temperature,
            scale_by_t2=config.scale_by_t2,
            reduction=reduction,
            num_items=num_items,
            student_bias=scored.head.bias,
            teacher_bias=scored.teacher.bias,
            softcap=scored.head.softcap,
        )

    def _require_unit_temperature(self, why: str) -> None:
        if self.config.temperature != 1:
            raise ValueError(f"{why}, but method.temperature={self.config.temperature}; set method.temperature=1.")

    def _topk_divergence(self, scored: Scored, beta, rows, num_items, reduction: str = "mean") -> torch.Tensor:
        """The divergence against a cached top-k teacher (its log-probs are at temperature 1)."""
        config, teacher = self.config, scored.teacher
        self._require_unit_temperature("this teacher's log-probs are at temperature 1 (cached, served)")
        student, ids, logprobs, tail = scored.student, teacher.ids, teacher.logprobs, teacher.tail
        if rows is not None:
            student, ids, logprobs, tail = student[rows], ids[rows], logprobs[rows], tail[rows]
        return fused_linear_topk_divergence(
            student,
            scored.head.weight,
            ids,
            logprobs,
            tail,
            beta=config.beta if beta is None else beta,
            reduction=reduction,
            num_items=num_items,
            student_bias=scored.head.bias,
            softcap=scored.head.softcap,
        )

    def _cross_tokenizer_divergence(self, scored: Scored, beta, rows, num_items) -> torch.Tensor:
        """Exact-match tokens: the top-k + tail divergence; the rest: ULD on merged spans (teachers/cross_tokenizer)."""
        config, teacher = self.config, scored.teacher
        self._require_unit_temperature("teacher.cross_tokenizer=true compares the two models at temperature 1")
        if rows is not None:
            raise ValueError(
                "method.unlikelihood drops repeated tokens from the divergence row by row, which a cross-tokenizer "
                "teacher's span groups do not allow; set method.unlikelihood=0."
            )
        loss, _ = cross_tokenizer_divergence(
            scored.student,
            scored.head.weight,
            exact_rows=teacher.exact_rows,
            exact_ids=teacher.exact_ids,
            exact_logprobs=teacher.exact_logprobs,
            exact_tail=teacher.exact_tail,
            span_rows=teacher.span_rows,
            span_targets=teacher.span_targets,
            span_group=teacher.span_group,
            span_first=teacher.span_first,
            span_teacher=teacher.span_teacher,
            span_weight=teacher.span_weight,
            beta=config.beta if beta is None else beta,
            uld_weight=teacher.uld_weight,
            num_items=num_items,
            student_bias=scored.head.bias,
            softcap=scored.head.softcap,
        )
        return loss

    def full_teacher(self, scored: Scored, setting: str) -> TeacherOutput:
        """The teacher's hidden states and head, which ``setting`` needs; a one-line error for teachers that only
        give top-k rows (cached, served) or aligned rows (cross-tokenizer)."""
        if not isinstance(scored.teacher, TeacherOutput):
            raise ValueError(
                f"{setting} needs the teacher's full next-token distribution at every student token, but "
                f"teacher={self.teacher.__class__.__name__} gives {type(scored.teacher).__name__}; turn {setting} "
                f"off or use a teacher that runs beside the student with the same tokenizer."
            )
        return scored.teacher

    def distill_loss(
        self, scored: Scored, responses: list[list[int]], weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The divergence on every response token, with the repetition-aware terms the settings turn on; every term of
        a token times its entry of ``weights`` (:meth:`off_policy_weights`; default 1).

        ``unlikelihood > 0``: a token that repeats an earlier ``unlikelihood_n``-gram of its own response leaves
        the divergence (once a loop has started the teacher endorses it: in-context copying) and is pushed down
        instead by the unlikelihood ``-log(1 - q(y_t))`` of Welleck et al. 2019, weighted by ``unlikelihood`` and
        normalised by the same token count.

        ``repeat_penalty = λ > 0``: the target at every position is the teacher with ``λ`` taken off the logit of
        each token that would repeat an earlier ``repeat_penalty_n``-gram of the response (see
        :meth:`repeat_penalty_correction`), so the student learns the persona but not the teacher's copying.
        """
        config = self.config
        weight = getattr(config, "unlikelihood", 0.0)
        num_items = self.global_num_items(scored.n_tokens)  # one collective per step on every rank
        device = scored.student.device
        repeats = None
        if weight:
            marked, offset = [], 0
            for response in responses:
                marked += [offset + t for t in repeat_positions(response, config.unlikelihood_n)]
                offset += len(response)
            repeats = torch.zeros(scored.n_tokens, dtype=torch.bool, device=device)
            repeats[torch.tensor(marked, dtype=torch.long, device=device)] = True
        loss = self.divergence(scored, rows=None if repeats is None else ~repeats, num_items=num_items, weights=weights)
        metrics = {"divergence": loss.detach().item()}
        if isinstance(scored.teacher, CrossTokenizerTeacherOutput):
            n = max(scored.n_tokens, 1)
            metrics["span_token_frac"] = len(scored.teacher.span_rows) / n
            metrics["unaligned_frac"] = scored.teacher.unaligned / n
        if weight:
            head = scored.head
            log_q = fused_linear_logprobs(
                scored.student[repeats],
                head.weight,
                response_targets(responses, device)[repeats],
                bias=head.bias,
                softcap=head.softcap,
            )
            per_token = -torch.log1p(-log_q.exp().clamp(max=1 - 1e-6))
            if weights is not None:
                per_token = per_token * weights[repeats]
            unlikelihood = per_token.sum() / max(num_items, 1.0)
            loss = loss + weight * unlikelihood
            metrics["unlikelihood"] = unlikelihood.detach().item()
            metrics["repeat_frac"] = repeats.float().mean().item() if scored.n_tokens else 0.0
        if getattr(config, "repeat_penalty", 0.0):
            correction, penalty_metrics = self.repeat_penalty_correction(scored, responses, repeats, num_items, weights)
            loss = loss + correction
            metrics |= penalty_metrics
        return loss, metrics

    def repeat_penalty_correction(
        self,
        scored: Scored,
        responses: list[list[int]],
        skip: torch.Tensor | None,
        num_items: float,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """What turns the fused ``KL(q‖p)`` into ``KL(q‖p')``, ``p'`` the teacher with ``λ`` off the logits of the
        copy candidates ``S_t`` (:func:`charlit.quality.copy_candidates`) at each row ``t``, without a second pass
        over the vocabulary: ``log p' = log p − λ·[v ∈ S_t] − log Z_t`` with ``Z_t = 1 − (1 − e^−λ)·p_t(S_t)``, so

            KL(q‖p') = KL(q‖p) + λ·q_t(S_t) + log Z_t,

        which needs only the gathered probabilities of the candidates (``Z_t`` is the teacher's, no gradient).
        Rows in ``skip`` (unlikelihood's repeats, outside the divergence) get no correction; a row's correction is
        weighted like its divergence (``weights``)."""
        penalty, device = self.config.repeat_penalty, scored.student.device
        rows, tokens, offset = [], [], 0
        for response in responses:
            for t, v in copy_candidates(response, self.config.repeat_penalty_n):
                rows.append(offset + t)
                tokens.append(v)
            offset += len(response)
        rows = torch.tensor(rows, dtype=torch.long, device=device)
        tokens = torch.tensor(tokens, dtype=torch.long, device=device)
        if skip is not None:
            keep = ~skip[rows]
            rows, tokens = rows[keep], tokens[keep]
        if not len(rows):
            return scored.student.sum() * 0.0, {"copy_rows": 0.0, "copy_mass": 0.0}
        head, teacher = scored.head, self.full_teacher(scored, "method.repeat_penalty")
        q = fused_linear_logprobs(scored.student[rows], head.weight, tokens, bias=head.bias, softcap=head.softcap).exp()
        with torch.no_grad():
            p = fused_linear_logprobs(
                teacher.hidden[rows], teacher.weight, tokens, bias=teacher.bias, softcap=teacher.softcap
            ).exp()
        unique, row_of = torch.unique(rows, return_inverse=True)
        q_mass = torch.zeros(len(unique), dtype=q.dtype, device=device).index_add(0, row_of, q)
        p_mass = torch.zeros(len(unique), dtype=p.dtype, device=device).index_add(0, row_of, p)
        log_z = torch.log1p(-(1 - math.exp(-penalty)) * p_mass.clamp(max=1.0))
        per_row = penalty * q_mass + log_z
        if weights is not None:
            per_row = per_row * weights[unique]
        correction = per_row.sum() / max(num_items, 1.0)
        metrics = {
            "copy_rows": len(unique) / max(scored.n_tokens, 1),
            "copy_mass": q_mass.detach().mean().item(),
        }
        return correction, metrics

    # ---- EMA teacher -----------------------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx):
        """After each optimizer step (global_step advanced; once per accumulation window) move the EMA."""
        if self.teacher.ema is not None and int(self.global_step) != self._ema_step:
            self.teacher.ema.update()
            self._ema_step = int(self.global_step)

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self.teacher.ema is not None:
            checkpoint["ema_teacher"] = self.teacher.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if self.teacher.ema is not None and "ema_teacher" in checkpoint:
            self.teacher.ema.load_state_dict(checkpoint["ema_teacher"])
            self._ema_step = int(checkpoint.get("global_step", 0))
