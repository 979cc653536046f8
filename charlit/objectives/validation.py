"""Held-out validation shared by every objective, so runs of different methods compare on one panel.

On held-out prompts the student samples replies from the bare prompt (fixed seeds, so the start and end
of a run see the same randomness), then:

* ``val/divergence``: the divergence (``beta``; default reverse KL) between the student and the frozen
  base conditioned on the constitution, per response token;
* ``val/persona_gain``: the likelihood judge's gain of the student's replies (see
  :mod:`charlit.eval.likelihood_judge`), with the bare base's and the constitution-prompted base's
  replies scored once as ``val/persona_gain_bare`` and ``val/persona_gain_prompted``;
* text quality (:mod:`charlit.quality`): ``val/looping_frac`` (and ``_bare`` / ``_prompted``), and the
  coherence-gated twins ``val/persona_gain_gated`` / ``val/persona_progress_gated`` in which a reply that fails the
  gate (:class:`charlit.quality.QualityGate`: empty, looping, recited from the constitution, or far less fluent
  under the bare base than the bare base's own replies) counts as the bare base's mean gain (no gain), for the
  student and the prompted base alike.
  ``looping_margin`` / ``on_looping``: warn about (or stop) a run whose looping fraction climbs more than the
  margin above the bare base's;
* with ``val.persona_vector=true``, the persona-vector judge (:mod:`charlit.eval.judges.persona_vector`) on the same
  replies under the frozen base: ``val/persona_vector`` (mean projection), its ``_bare`` / ``_prompted`` references
  and ``val/persona_vector_progress`` (raw and ``_gated``) over the bare→prompted range. Its directions are fitted
  on the frozen base at the first validation (minutes on the default model, then cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.eval.judges.base import Reply
from charlit.eval.likelihood_judge import persona_gain_and_fluency
from charlit.kernels import fused_linear_divergence
from charlit.models.heads import lm_head
from charlit.models.modes import eval_mode
from charlit.models.sequences import response_hidden
from charlit.quality import QualityGate, reply_quality
from charlit.sampling import SamplingParams
from charlit.sampling.hf import end_token_ids
from charlit.settings import parse, setting
from charlit.teachers.self import SelfTeacher


@dataclass
class ValidationSettings:
    """The ``val`` block of conf/train.yaml."""

    every_n_steps: int = setting(10, ge=0, help="0 = no validation")
    beta: float = setting(1.0, ge=0, le=1)
    temperature: float = setting(1.0, gt=0)
    looping_margin: float = setting(0.2, ge=0, help="looping fraction allowed above the bare base's")
    on_looping: str = setting("warn", choices=("warn", "stop", "off"))
    persona_vector: bool = setting(False, help="also score replies with the persona-vector judge")
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def from_config(cls, node) -> ValidationSettings:
        sampling = parse(SamplingParams, node.get("sampling", {}), "val.sampling")
        settings = parse(cls, {k: v for k, v in node.items() if k != "sampling"}, "val")
        settings.sampling = sampling
        return settings


@dataclass
class Scored:
    """One system's replies to a batch of held-out prompts, as the judge and the quality gate see them."""

    gains: list[float]  # the likelihood judge's persona gain
    fluency: list[float]  # the bare base's mean per-token log-likelihood of the reply
    text_ok: list[bool]  # passes the gate's text checks (not empty, no loop, not recited)
    looping: list[bool]
    vector: list[float] = field(default_factory=list)  # the persona-vector judge's projection (val.persona_vector)

    def extend(self, other: Scored) -> None:
        for name in ("gains", "fluency", "text_ok", "looping", "vector"):
            getattr(self, name).extend(getattr(other, name))

    def coherent(self, gate: QualityGate, reference_fluency: float) -> list[bool]:
        return [ok and gate.fluent(f, reference_fluency) for ok, f in zip(self.text_ok, self.fluency)]


@dataclass
class BatchResult:
    divergence_sum: float
    tokens: int
    student: Scored
    samples: list[dict]
    baselines: dict[str, Scored] = field(default_factory=dict)  # "bare", "prompted": at the first validation


class HeldOutValidation:
    def __init__(
        self, policy, reference, tokenizer, constitution, sampler, settings: ValidationSettings, seed: int = 1234
    ):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.constitution, self.sampler, self.params = constitution, sampler, settings.sampling
        self.beta, self.temperature, self.seed = settings.beta, settings.temperature, seed
        self.teacher = SelfTeacher(policy, reference, tokenizer, constitution, weights="frozen")
        self.prompted_replies: dict[str, str] = {}  # prompt -> the prompted base's reply, for sample tables
        self.gate = QualityGate()
        self.end_ids = end_token_ids(tokenizer, policy)
        self.source = constitution.system_prompt()  # the text a reply must not recite
        self.persona_vector = settings.persona_vector
        self._vector_judge = None  # built on the frozen base at the first validation

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _vector_scores(self, base, prompts: list[str], replies: list[list[int]]) -> list[float]:
        if not self.persona_vector:
            return []
        if self._vector_judge is None:
            from charlit.eval.judges.persona_vector import PersonaVectorJudge

            self._vector_judge = PersonaVectorJudge(base_model=base, tokenizer=self.tokenizer)
            if not self._vector_judge.knows(self.constitution):
                print(
                    f"[charlit] val.persona_vector: no bundled replies for persona {self.constitution.name}; "
                    f"val/persona_vector is left out (known: {', '.join(self._vector_judge.vectors.personas())}).",
                    flush=True,
                )
        if not self._vector_judge.knows(self.constitution):
            return []
        return self._vector_judge.score([Reply(p, tuple(r), "") for p, r in zip(prompts, replies)], self.constitution)

    def _score(self, base, prompts: list[str], replies: list[list[int]]) -> Scored:
        gains, fluency = persona_gain_and_fluency(base, self.tokenizer, self.constitution, prompts, replies)
        quality = [reply_quality(r, self._decode(r), self.end_ids, self.gate, self.source) for r in replies]
        return Scored(
            gains.double().cpu().tolist(),
            fluency.double().cpu().tolist(),
            [q.coherent for q in quality],
            [q.loops for q in quality],
            self._vector_scores(base, prompts, replies),
        )

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
        div_sum = (
            fused_linear_divergence(
                student_hidden,
                head.weight,
                teacher.hidden,
                teacher.weight,
                beta=self.beta,
                temperature=self.temperature,
                reduction="sum",
                student_bias=head.bias,
                teacher_bias=teacher.bias,
                softcap=head.softcap,
            ).item()
            if tokens
            else 0.0
        )

        with self.reference.model() as base:
            student = self._score(base, prompts, replies)
            samples = [
                {"prompt": p, "student": self._decode(r), "loops": loop}
                for p, r, loop in zip(prompts, replies, student.looping)
            ]
            result = BatchResult(div_sum, tokens, student, samples)
            if with_baselines:
                bare_replies = self.sampler.generate(base, bare_ctx, self.params, seed=seed, desc="val bare base")
                prompted_ctx = [
                    render_prompt_ids(self.tokenizer, teacher_messages(p, self.constitution)) for p in prompts
                ]
                prompted_replies = self.sampler.generate(
                    base, prompted_ctx, self.params, seed=seed, desc="val prompted base"
                )
                result.baselines = {
                    "bare": self._score(base, prompts, bare_replies),
                    "prompted": self._score(base, prompts, prompted_replies),
                }
                self.prompted_replies.update({p: self._decode(r) for p, r in zip(prompts, prompted_replies)})

        for sample in samples:
            sample["teacher"] = self.prompted_replies.get(sample["prompt"], "")
        return result


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def _ci95(values) -> float:
    """Half-width of the normal-approximation 95% interval of the mean."""
    values = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return 1.96 * values.std().item() / len(values) ** 0.5 if len(values) > 1 else float("nan")


def _gated(scored: Scored, gate: QualityGate, bare_gain: float, bare_fluency: float) -> list[float]:
    """Gains with every reply that fails the gate counted as the bare base's mean gain (no gain)."""
    return _gated_values(scored.gains, scored.coherent(gate, bare_fluency), bare_gain)


def _gated_values(values: list[float], coherent: list[bool], floor: float) -> list[float]:
    return [v if ok else floor for v, ok in zip(values, coherent)]


@dataclass
class ValidationTally:
    """One validation run's batch results, summed up into ``val/*`` metrics."""

    gate: QualityGate = field(default_factory=QualityGate)
    divergence_sum: float = 0.0
    tokens: int = 0
    student: Scored = field(default_factory=lambda: Scored([], [], [], []))
    samples: list[dict] = field(default_factory=list)
    baseline_scores: dict[str, Scored] = field(default_factory=dict)

    def add(self, result: BatchResult) -> None:
        self.divergence_sum += result.divergence_sum
        self.tokens += result.tokens
        self.student.extend(result.student)
        self.samples += result.samples
        for key, scored in result.baselines.items():
            self.baseline_scores.setdefault(key, Scored([], [], [], [])).extend(scored)

    def baselines(self) -> dict[str, float]:
        """The bare and prompted base's figures (computed once, at the first validation): raw and gated gain,
        looping fraction, the bare replies' fluency (the gate's reference)."""
        bare, prompted = self.baseline_scores["bare"], self.baseline_scores["prompted"]
        gain, fluency = _mean(bare.gains), _mean(bare.fluency)
        return {
            "val/persona_gain_bare": gain,
            "val/persona_gain_prompted": _mean(prompted.gains),
            "val/persona_gain_prompted_gated": _mean(_gated(prompted, self.gate, gain, fluency)),
            "val/looping_frac_bare": _mean(bare.looping),
            "val/looping_frac_prompted": _mean(prompted.looping),
            "val/fluency_bare": fluency,
            **(
                {
                    "val/persona_vector_bare": _mean(bare.vector),
                    "val/persona_vector_prompted": _mean(prompted.vector),
                    "val/persona_vector_prompted_gated": _mean(
                        _gated_values(prompted.vector, prompted.coherent(self.gate, fluency), _mean(bare.vector))
                    ),
                }
                if bare.vector and prompted.vector
                else {}
            ),
        }

    def metrics(self, baselines: dict[str, float]) -> dict[str, float]:
        bare = baselines["val/persona_gain_bare"]
        gated = _gated(self.student, self.gate, bare, baselines.get("val/fluency_bare"))
        gains = self.student.gains
        metrics = {
            "val/divergence": self.divergence_sum / max(self.tokens, 1),
            "val/persona_gain": _mean(gains),
            "val/persona_gain_ci95": _ci95(gains),
            "val/persona_gain_gated": _mean(gated),
            "val/persona_gain_gated_ci95": _ci95(gated),
            "val/looping_frac": _mean(self.student.looping),
            "val/fluency": _mean(self.student.fluency),
        }
        for suffix, prompted in (
            ("", baselines["val/persona_gain_prompted"]),
            ("_gated", baselines.get("val/persona_gain_prompted_gated")),
        ):
            span = None if prompted is None else prompted - bare
            if span is not None and abs(span) > 1e-12:
                metrics[f"val/persona_progress{suffix}"] = (metrics[f"val/persona_gain{suffix}"] - bare) / span
                metrics[f"val/persona_progress{suffix}_ci95"] = metrics[f"val/persona_gain{suffix}_ci95"] / abs(span)
        if self.student.vector and "val/persona_vector_bare" in baselines:
            metrics |= self._vector_metrics(baselines)
        return metrics

    def _vector_metrics(self, baselines: dict[str, float]) -> dict[str, float]:
        """``val/persona_vector`` and its progress over the bare→prompted range, raw and gated."""
        bare = baselines["val/persona_vector_bare"]
        coherent = self.student.coherent(self.gate, baselines.get("val/fluency_bare"))
        out = {"val/persona_vector": _mean(self.student.vector)}
        gated = _mean(_gated_values(self.student.vector, coherent, bare))
        for suffix, value, prompted in (
            ("", out["val/persona_vector"], baselines["val/persona_vector_prompted"]),
            ("_gated", gated, baselines["val/persona_vector_prompted_gated"]),
        ):
            if abs(prompted - bare) > 1e-12:
                out[f"val/persona_vector_progress{suffix}"] = (value - bare) / (prompted - bare)
        return out


def looping_alarm(metrics: dict, baselines: dict, margin: float) -> str | None:
    """A message when the student loops more than ``margin`` above the bare base, else None."""
    bare = baselines.get("val/looping_frac_bare")
    if bare is None or metrics["val/looping_frac"] <= bare + margin:
        return None
    return (
        f"val/looping_frac={metrics['val/looping_frac']:.2f} is more than val.looping_margin={margin:g} above the "
        f"bare base's {bare:.2f}: the student is learning degenerate loops (persona scores may be inflated; see "
        f"val/persona_progress_gated). Lower optim.lr or trainer.max_steps, or use method.loop_mask=true."
    )
