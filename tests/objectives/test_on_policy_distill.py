import pytest
import torch

from charlit.objectives.on_policy_distill import on_policy_step
from tests.conftest import compose
from tests.objectives.helpers import kl, lowers_own_loss, perturb, response_logits, tiny_objective


def test_lambda_coin_is_deterministic_and_has_the_right_rate():
    assert not any(on_policy_step(0, s, 0.0) for s in range(500))
    assert all(on_policy_step(0, s, 1.0) for s in range(500))
    draws = [on_policy_step(3, s, 0.3) for s in range(2000)]
    assert draws == [on_policy_step(3, s, 0.3) for s in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws != [on_policy_step(4, s, 0.3) for s in range(2000)]


def _spy_sampler(objective, monkeypatch):
    calls = []
    real = objective.sampler.generate

    def spy(model, prompts, params, **kw):
        calls.append([objective.tokenizer.decode(p) for p in prompts])
        return real(model, prompts, params, **kw)

    monkeypatch.setattr(objective.sampler, "generate", spy)
    return calls


def test_lambda_zero_uses_data_responses_lambda_one_samples(monkeypatch):
    objective, datamodule = tiny_objective("on_policy_distill", "method.lmbda=0")
    calls = _spy_sampler(objective, monkeypatch)
    batch = next(iter(datamodule.train_dataloader()))
    _, metrics, n_tokens = objective.compute_loss(batch)
    assert calls == [] and metrics["on_policy"] == 0.0
    assert n_tokens == sum(len(e["response_ids"]) for e in batch)

    objective, datamodule = tiny_objective("on_policy_distill", "method.lmbda=1")
    calls = _spy_sampler(objective, monkeypatch)
    _, metrics, n_tokens = objective.compute_loss(batch)
    assert len(calls) == 1 and metrics["on_policy"] == 1.0 and n_tokens <= 6 * len(batch)
    statement = objective.constitution.traits[0].statement
    assert all(statement not in c for c in calls[0])  # the student samples without the constitution


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_full_estimator_is_the_beta_divergence(beta):
    objective, datamodule = tiny_objective(
        "on_policy_distill", "method.lmbda=0", f"method.beta={beta}", "method.temperature=2.0"
    )
    perturb(objective.policy)
    batch = next(iter(datamodule.train_dataloader()))
    loss, _, n_tokens = objective.compute_loss(batch)
    total = 0.0
    with objective.reference.model() as base:
        for e in batch:
            s = response_logits(objective.policy, e["context_ids"], e["response_ids"]) / 2.0
            t = response_logits(base, objective.teacher.context_ids(e["prompt"]), e["response_ids"]) / 2.0
            total += (kl(t, s) if beta == 0.0 else kl(s, t)).sum()  # forward KL(p||q) / reverse KL(q||p)
    torch.testing.assert_close(loss.double(), total / n_tokens, rtol=2e-5, atol=2e-6)


def test_sampled_token_estimator_matches_hand_formula_and_gradient():
    objective, datamodule = tiny_objective("on_policy_distill", "method.lmbda=0", "method.estimator=sampled_token")
    perturb(objective.policy)
    batch = next(iter(datamodule.train_dataloader()))
    loss, metrics, n_tokens = objective.compute_loss(batch)
    advantages, surrogate = [], 0.0
    with objective.reference.model() as base:
        for e in batch:
            y = e["response_ids"]
            log_q = response_logits(objective.policy, e["context_ids"], y).log_softmax(-1)[range(len(y)), y]
            log_p = response_logits(base, objective.teacher.context_ids(e["prompt"]), y).log_softmax(-1)[
                range(len(y)), y
            ]
            advantages.append(log_q - log_p)
            surrogate += ((log_q - log_p) * log_q).sum()
    torch.testing.assert_close(loss.double(), surrogate / n_tokens, rtol=2e-5, atol=2e-6)
    assert metrics["kl_estimate"] == pytest.approx(torch.cat(advantages).mean().item(), rel=1e-4, abs=1e-6)
    # the gradient treats the advantage as a constant: d loss / d log q_t = a_t / N
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.policy.parameters())


def test_on_policy_distill_steps_lower_its_own_loss():
    objective, datamodule = tiny_objective("on_policy_distill", "method.lmbda=0")
    perturb(objective.policy, scale=0.1)  # start away from the teacher so there is a gap to close
    batch = next(iter(datamodule.train_dataloader()))
    first, last = lowers_own_loss(objective, batch, steps=4, lr=1e-3)
    assert last < first, (first, last)


def test_prompts_data_needs_lambda_one():
    with pytest.raises(ValueError, match=r"method.lmbda=0.5 mixes in fixed responses.*data=conversations"):
        tiny_objective("on_policy_distill", "data=prompts")
    objective, datamodule = tiny_objective("on_policy_distill", "data=prompts", "method.lmbda=1")
    loss, metrics, _ = objective.compute_loss(["How do I fold a paper boat?", "What is rain?"])
    assert metrics["on_policy"] == 1.0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="method.estimator='exact'"):
        tiny_objective("on_policy_distill", "method.estimator=exact")


def test_always_on_policy_from_prompts_is_the_self_distill_run():
    """on_policy_distill with lmbda=1 on prompts and a frozen self-teacher is self_distill, term for term: same
    samples, same loss, same gradient, given the same settings (self_distill's YAML turns on the repetition-penalised
    target and greedy rollouts; they are passed on here). The method ablation keeps only self_distill of the two."""
    shared = ("greedy_rollouts", "repeat_penalty", "repeat_penalty_n", "beta", "temperature", "teacher_weights")
    self_cfg = compose(["method=self_distill"]).method
    same = [f"method.{k}={self_cfg[k]}" for k in shared]
    assert self_cfg.repeat_penalty > 0 and self_cfg.greedy_rollouts > 0  # the equality covers both terms
    runs = []
    for method, extra in (("self_distill", ()), ("on_policy_distill", ("data=prompts", "method.lmbda=1", *same))):
        objective, datamodule = tiny_objective(method, *extra)
        perturb(objective.policy)
        batch = next(iter(datamodule.train_dataloader()))
        torch.manual_seed(7)
        loss, _, n_tokens = objective.compute_loss(batch)
        loss.backward()
        grads = [p.grad.clone() for p in objective.policy.parameters() if p.requires_grad]
        runs.append((batch, loss.detach(), n_tokens, grads))
    (b1, l1, n1, g1), (b2, l2, n2, g2) = runs
    assert b1 == b2 and n1 == n2 > 0
    assert l1.item() > 0 and torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
