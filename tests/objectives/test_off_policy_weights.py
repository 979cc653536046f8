"""Truncated importance weights for samples decoded from bf16 weights (sampler.precision): the prefix ratios against
float64 log-probabilities, every loss term weighted per token, and the settings that cannot be reweighted refused."""

import math

import pytest
import torch

from charlit.models.heads import LMHead
from charlit.objectives.teacher_objective import Rollouts, Scored
from charlit.teachers import TeacherOutput
from tests.objectives.helpers import kl, tiny_objective


@pytest.fixture(scope="module")
def bf16_objective():
    objective, _ = tiny_objective("self_distill", "sampler.precision=bf16", "method.greedy_rollouts=0")
    return objective


def _scored(lengths, vocab=7, width=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    student = torch.randn(n, width, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, width, generator=gen)
    teacher = TeacherOutput(
        hidden=torch.randn(n, width, generator=gen),
        weight=torch.randn(vocab, width, generator=gen),
        bias=None,
        softcap=None,
    )
    return Scored(student=student, head=LMHead(weight=weight, bias=None, softcap=None), teacher=teacher, n_tokens=n)


def _learner_logprobs(scored, responses):
    logits = scored.student.detach().double() @ scored.head.weight.double().T
    flat = torch.tensor([t for r in responses for t in r])
    return logits.log_softmax(-1)[range(len(flat)), flat]


@pytest.mark.parametrize("through_token", [False, True])
def test_weights_are_truncated_prefix_ratios_float64(through_token, bf16_objective):
    objective = bf16_objective
    assert objective.config.importance_cap == 2.0
    responses = [[1, 2, 3, 4], [5, 6, 0], [3, 3]]
    scored = _scored([len(r) for r in responses])
    log_p = _learner_logprobs(scored, responses)
    shifts = [[0.1, -0.3, 0.4, 0.2], None, [-0.9, 0.5]]  # log p - log q per token; None: a greedy response
    logprobs, offset = [], 0
    for r, shift in zip(responses, shifts):
        logprobs.append(None if shift is None else [float(log_p[offset + i] - d) for i, d in enumerate(shift)])
        offset += len(r)
    weights, metrics = objective.off_policy_weights(scored, Rollouts(responses, 0.0, logprobs), through_token)
    expected = []
    for r, shift in zip(responses, shifts):
        for t in range(len(r)):
            if shift is None:
                expected.append(1.0)
            else:
                exponent = sum(shift[: t + 1 if through_token else t])
                expected.append(min(2.0, math.exp(exponent)))
    torch.testing.assert_close(weights.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert metrics["is_clipped_frac"] == pytest.approx(sum(w == 2.0 for w in expected) / len(expected))
    assert metrics["sampler_logprob_gap"] == pytest.approx(sum(abs(d) for s in shifts if s for d in s) / 6, rel=1e-4)


def test_on_policy_rollouts_get_no_weights(bf16_objective):
    assert bf16_objective.off_policy_weights(_scored([3]), Rollouts([[1, 2, 3]], 0.0)) == (None, {})


def test_every_loss_term_is_weighted_per_token_float64():
    """The repeat-penalised reverse KL (tests/objectives/test_self_distill.py's float64 reference), each row times its
    weight, over the token count: value and gradient."""
    looped, plain = [1, 2, 3, 1, 2, 4, 1, 2], [5, 0, 5, 0, 5]
    candidates = {5: [3], 8 + 4: [5]}
    penalty = 1.5
    objective, _ = tiny_objective("self_distill", f"method.repeat_penalty={penalty}", "method.repeat_penalty_n=3")
    scored = _scored([8, 5], vocab=6)
    weights = torch.linspace(0.2, 2.0, 13)
    loss, _ = objective.distill_loss(scored, [looped, plain], weights)
    (got,) = torch.autograd.grad(loss, scored.student)
    s = scored.student.double() @ scored.head.weight.double().T
    t = scored.teacher.hidden.double() @ scored.teacher.weight.double().T
    for row, tokens in candidates.items():
        t[row, tokens] -= penalty
    reference = (kl(s, t) * weights.double()).sum() / 13
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-6)
    (want,) = torch.autograd.grad(reference, scored.student)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6)
    unweighted, _ = objective.distill_loss(scored, [looped, plain])
    assert abs(unweighted.item() - loss.item()) > 1e-3


def test_a_bf16_step_reweights_its_samples(bf16_objective):
    loss, metrics, _ = bf16_objective.compute_loss(["Tell me about the sea.", "How do I save money?"])
    assert loss.requires_grad and 0 < metrics["sampler_logprob_gap"] < 0.1
    assert metrics["is_weight_mean"] == pytest.approx(1.0, abs=0.05)


def test_filtered_sampling_cannot_be_reweighted():
    objective, _ = tiny_objective("self_distill", "sampler.precision=bf16", "sampler.top_p=0.9")
    with pytest.raises(ValueError, match=r"sampler.top_p=0.9 .*sampler.precision=fp32"):
        objective.compute_loss(["Tell me about the sea.", "How do I save money?"])
