import pytest
import torch

from charlit.teachers.amplified import AmplifiedTeacher
from tests.objectives.helpers import response_logits, tiny_objective

PROMPTS = ["How do I fold a paper boat?", "What makes bread rise?"]


def _responses(tokenizer):
    return [
        tokenizer("Arr, fold it in half, matey!", add_special_tokens=False)["input_ids"],
        tokenizer("Yeast eats sugar and breathes out gas.", add_special_tokens=False)["input_ids"],
    ]


@pytest.mark.parametrize("alpha", [1.5, 0.5])
def test_amplified_hidden_through_the_head_equals_logit_contrast(alpha):
    objective, _ = tiny_objective("self_distill", "teacher=amplified", f"teacher.alpha={alpha}")
    teacher = objective.teacher
    assert isinstance(teacher, AmplifiedTeacher)
    responses = _responses(objective.tokenizer)
    out = teacher.score(PROMPTS, responses)
    got = out.hidden.double() @ out.weight.double().T
    expected = []
    with objective.reference.model() as base:
        for prompt, resp in zip(PROMPTS, responses):
            t_ctx = response_logits(base, teacher.context_ids(prompt), resp)
            t_bare = response_logits(base, teacher.bare_context_ids(prompt), resp)
            expected.append(t_ctx + alpha * (t_ctx - t_bare))
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-4, atol=2e-5)
    assert not out.hidden.requires_grad


def test_alpha_zero_is_the_self_teacher():
    objective, _ = tiny_objective("self_distill", "teacher=amplified", "teacher.alpha=0")
    responses = _responses(objective.tokenizer)
    amplified = objective.teacher.score(PROMPTS, responses)
    plain = super(AmplifiedTeacher, objective.teacher).score(PROMPTS, responses)
    torch.testing.assert_close(amplified.hidden, plain.hidden, rtol=0, atol=0)


def test_softcapped_head_is_refused():
    objective, _ = tiny_objective("self_distill")
    objective.policy.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0.*teacher=self"):
        AmplifiedTeacher(objective.policy, objective.reference, objective.tokenizer, objective.constitution, alpha=1.0)
