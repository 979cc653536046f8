import pytest
import torch

from charlit.data.modules.conversations import conversation_turns
from tests.objectives.helpers import kl, lowers_own_loss, perturb, response_logits, tiny_objective


def test_every_assistant_turn_is_an_example_with_its_history():
    conv = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    turns = conversation_turns([conv], "all")
    assert [(len(ctx), resp["content"]) for ctx, resp in turns] == [(1, "b"), (3, "d")]
    assert [(len(ctx), resp["content"]) for ctx, resp in conversation_turns([conv], "last")] == [(3, "d")]


@pytest.mark.parametrize("beta, ce_coef", [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0)])
def test_distill_loss_is_divergence_of_constitution_teacher_plus_ce(beta, ce_coef):
    objective, datamodule = tiny_objective("distill", f"method.beta={beta}", f"method.ce_coef={ce_coef}")
    perturb(objective.policy)  # the frozen teacher keeps the initial weights
    batch = next(iter(datamodule.train_dataloader()))
    loss, metrics, n_tokens = objective.compute_loss(batch)
    div, ce, count = 0.0, 0.0, 0
    with objective.reference.model() as base:
        for e in batch:
            t_ctx = objective.teacher.context_ids(e["prompt"])
            assert objective.constitution.system_prompt()[:60] in objective.tokenizer.decode(t_ctx)
            assert objective.constitution.system_prompt()[:60] not in objective.tokenizer.decode(e["context_ids"])
            student = response_logits(objective.policy, e["context_ids"], e["response_ids"])
            teacher = response_logits(base, t_ctx, e["response_ids"])
            div += (kl(teacher, student) if beta == 0 else kl(student, teacher)).sum()
            ce += -student.log_softmax(-1)[range(len(e["response_ids"])), e["response_ids"]].sum()
            count += len(e["response_ids"])
    assert n_tokens == count
    torch.testing.assert_close(loss.double(), (div + ce_coef * ce) / count, rtol=2e-5, atol=2e-6)
    assert ("ce" in metrics) == (ce_coef > 0)


def test_distill_steps_lower_its_own_loss():
    objective, datamodule = tiny_objective("distill", "method.ce_coef=0.1")
    batch = next(iter(datamodule.train_dataloader()))
    first, last = lowers_own_loss(objective, batch, steps=4, lr=3e-3)
    assert last < first, (first, last)


def test_distill_needs_conversations_and_valid_ce():
    with pytest.raises(ValueError, match="method=distill trains on conversations but data=prompts"):
        tiny_objective("distill", "data=prompts")
    with pytest.raises(ValueError, match="method.ce_coef=-1 is out of range; it must be >= 0"):
        tiny_objective("distill", "method.ce_coef=-1")
