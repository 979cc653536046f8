import pytest
import torch

from charlit.models.heads import LMHead
from charlit.objectives.teacher_objective import Scored
from charlit.run import build_objective
from charlit.teachers import TeacherOutput
from tests.conftest import compose
from tests.objectives.helpers import kl, lowers_own_loss, perturb, response_logits


def _tiny(method, *extra):
    cfg = compose(
        [f"method={method}", "model=tiny", "logger=none", "sampler.max_new_tokens=6", "data.batch_size=2", *extra]
    )
    return build_objective(cfg)


def test_student_never_sees_constitution_teacher_always_does(monkeypatch):
    objective, datamodule = _tiny("self_distill")
    seen = {"student": [], "teacher": []}
    real_generate = objective.sampler.generate
    real_hidden = objective.teacher.score.__globals__["response_hidden"]

    def spy_generate(model, prompts, params, **kw):
        seen["student"] += [objective.tokenizer.decode(p) for p in prompts]
        return real_generate(model, prompts, params, **kw)

    def spy_hidden(model, contexts, responses, pad_id, **kw):
        seen["teacher"] += [objective.tokenizer.decode(c) for c in contexts]
        return real_hidden(model, contexts, responses, pad_id, **kw)

    monkeypatch.setattr(objective.sampler, "generate", spy_generate)
    monkeypatch.setitem(objective.teacher.score.__globals__, "response_hidden", spy_hidden)
    objective.compute_loss(["How do I tie a knot?", "What is rain?"])
    statement = objective.constitution.traits[0].statement
    assert len(seen["student"]) == 2 and len(seen["teacher"]) == 2
    assert all(statement not in s and objective.constitution.description not in s for s in seen["student"])
    assert all(statement in t for t in seen["teacher"])


def test_self_distill_steps_lower_its_own_loss():
    """Same prompts, same seeded samples (the step does not advance outside a Trainer): a few Adam steps on the
    objective's own loss must lower it."""
    objective, _ = _tiny("self_distill")
    perturb(objective.policy, scale=0.1)  # start away from the teacher so there is a gap to close
    batch = ["Tell me about the sea.", "How do I save money?"]
    first, last = lowers_own_loss(objective, batch, steps=4, lr=1e-3)
    assert last < first, (first, last)


def test_frozen_teacher_with_lora_is_base_model():
    objective, _ = _tiny("self_distill", "model.lora.r=4")
    assert objective.reference.shares_weights
    lora_b = [p for n, p in objective.policy.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        with objective.reference.model() as base:
            frozen = base(ids).logits
        live = objective.policy(ids).logits
        with objective.policy.disable_adapter():
            plain = objective.policy(ids).logits
    torch.testing.assert_close(frozen, plain)
    assert not torch.allclose(frozen, live)


def test_sft_loss_matches_cross_entropy_on_assistant_tokens():
    objective, datamodule = _tiny("sft")
    batch = next(iter(datamodule.train_dataloader()))
    loss, _, n_tokens = objective.compute_loss(batch)
    logits = objective.policy(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    targets = batch["labels"][:, 1:]
    reference = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        / n_tokens
    )
    assert n_tokens == int((targets != -100).sum())
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-6)


def test_ema_teacher_moves_after_each_optimizer_step_and_teaches_with_ema_weights():
    import lightning as L

    objective, datamodule = _tiny(
        "self_distill", "method.teacher_weights=ema", "method.ema_decay=0.75", "optim.warmup_steps=0", "optim.lr=1e-2"
    )
    ema = objective.teacher.ema
    start = [p.detach().clone() for _, p in ema.params]
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(objective, datamodule=datamodule)
    assert trainer.global_step == 1
    moved = False
    for s, p0, (_, p) in zip(ema.shadow, start, ema.params):
        torch.testing.assert_close(s, 0.75 * p0 + 0.25 * p.detach(), rtol=1e-6, atol=1e-7)
        moved |= not torch.equal(p0, p.detach())
    assert moved
    # the teacher's forward sees the EMA weights, the policy keeps its own afterwards
    with objective.teacher.network():
        assert all(torch.equal(p, s) for (_, p), s in zip(ema.params, ema.shadow))
    assert not all(torch.equal(p, s) for (_, p), s in zip(ema.params, ema.shadow))
    checkpoint = {}
    objective.on_save_checkpoint(checkpoint)
    assert set(checkpoint["ema_teacher"]["shadow"]) == {n for n, _ in ema.params}


# one sampled generate call and the bare teacher target, so a patched sampler and a plain reverse-KL reference apply
PLAIN_TARGET = ("method.greedy_rollouts=0", "method.repeat_penalty=0")


def test_loop_mask_cuts_a_looping_sample_where_its_loop_completes(monkeypatch):
    looped = [5, 6, 7, 8] * 3 + [9]  # the 4-gram 5 6 7 8 a third time at index 8
    plain = [11, 12, 13, 14, 15]
    for mask, expected in ((True, [looped[:8], plain]), (False, [looped, plain])):
        objective, _ = _tiny("self_distill", f"method.loop_mask={str(mask).lower()}", *PLAIN_TARGET)
        monkeypatch.setattr(objective.sampler, "generate", lambda *a, **k: [list(looped), list(plain)])
        seen = {}

        def spy_score(prompts, contexts, responses, real=objective.score, seen=seen):
            seen["responses"] = responses
            return real(prompts, contexts, responses)

        monkeypatch.setattr(objective, "score", spy_score)
        _, metrics, n_tokens = objective.compute_loss(["How do I tie a knot?", "What is rain?"])
        assert seen["responses"] == expected and n_tokens == sum(map(len, expected))
        assert metrics["looping_frac"] == 0.5


def test_unlikelihood_replaces_the_divergence_on_repeated_ngrams_float64():
    """Reverse KL on ordinary tokens plus w * -log(1 - q(y_t)) on tokens that repeat an earlier 4-gram, both over
    the batch's token count, against float64 logits of full forwards (hand-marked repeats)."""
    looped = [5, 6, 7, 8, 9, 5, 6, 7, 8, 5, 6, 7, 8]  # the 4-gram 5 6 7 8 ends again at 8 and 12
    plain = [11, 12, 13, 14, 15]
    repeated = [{8, 12}, set()]
    objective, _ = _tiny("self_distill", "method.unlikelihood=0.5", *PLAIN_TARGET)
    perturb(objective.policy)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(objective.sampler, "generate", lambda *a, **k: [list(looped), list(plain)])
    prompts = ["How do I tie a knot?", "What is rain?"]
    loss, metrics, n_tokens = objective.compute_loss(prompts)
    monkeypatch.undo()
    divergence = unlikelihood = 0.0
    with objective.reference.model() as base:
        for prompt, context, y, marks in zip(prompts, objective.student_contexts(prompts), (looped, plain), repeated):
            s = response_logits(objective.policy, context, y)
            t = response_logits(base, objective.teacher.context_ids(prompt), y)
            per_token = kl(s, t)
            q = s.softmax(-1)[range(len(y)), y]
            divergence += sum(per_token[i] for i in range(len(y)) if i not in marks)
            unlikelihood += sum(-torch.log1p(-q[i]) for i in marks)
    assert n_tokens == len(looped) + len(plain)
    torch.testing.assert_close(loss.double(), (divergence + 0.5 * unlikelihood) / n_tokens, rtol=2e-5, atol=2e-6)
    assert metrics["repeat_frac"] == pytest.approx(2 / n_tokens)
    assert metrics["unlikelihood"] == pytest.approx(float(unlikelihood / n_tokens), rel=1e-4)


def test_repeat_penalty_is_reverse_kl_to_the_penalised_teacher_float64():
    """Value and gradients against float64 full logits: the teacher with lambda taken off the logit of each
    hand-listed copy candidate, reverse KL from the student, over the token count. A vocabulary of 6 keeps the
    candidates' probabilities large, so a missing or wrong correction shows."""
    looped = [1, 2, 3, 1, 2, 4, 1, 2]  # n=3: at t=5 token 3 would repeat "1 2 3"; the last "1 2" is at the end
    plain = [5, 0, 5, 0, 5]  # n=3: at t=4 token 5 would repeat "5 0 5" (at t=3, "0 5" had not occurred)
    candidates = {5: [3], 8 + 4: [5]}  # rows of the concatenated batch
    penalty, n_tokens, vocab, width = 1.5, 13, 6, 8
    objective, _ = _tiny("self_distill", f"method.repeat_penalty={penalty}", "method.repeat_penalty_n=3")
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(n_tokens, width, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, width, generator=gen, requires_grad=True)
    teacher, teacher_weight = torch.randn(n_tokens, width, generator=gen), torch.randn(vocab, width, generator=gen)
    scored = Scored(
        student=student,
        head=LMHead(weight=weight, bias=None, softcap=None),
        teacher=TeacherOutput(hidden=teacher, weight=teacher_weight, bias=None, softcap=None),
        n_tokens=n_tokens,
    )
    loss, metrics = objective.distill_loss(scored, [looped, plain])
    got = torch.autograd.grad(loss, (student, weight))
    s = student.double() @ weight.double().T
    t = teacher.double() @ teacher_weight.double().T
    for row, tokens in candidates.items():
        t[row, tokens] -= penalty
    reference = kl(s, t).sum() / n_tokens
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-6)
    for g, want in zip(got, torch.autograd.grad(reference, (student, weight))):
        torch.testing.assert_close(g.double(), want.double(), rtol=1e-4, atol=1e-6)
    assert metrics["copy_rows"] == pytest.approx(2 / n_tokens)
    unpenalised = kl(s, teacher.double() @ teacher_weight.double().T).sum() / n_tokens
    assert abs(unpenalised - reference) > 1e-3  # the correction is not vanishingly small here


def test_repeat_penalty_needs_the_reverse_kl_at_temperature_one():
    with pytest.raises(ValueError, match=r"method.repeat_penalty=1.0 .*method.beta=0.5"):
        _tiny("self_distill", "method.repeat_penalty=1", "method.beta=0.5")


def test_greedy_rollouts_decode_that_share_of_the_batch_greedily(monkeypatch):
    objective, _ = _tiny("self_distill", "method.greedy_rollouts=0.5", "data.batch_size=4")
    calls = []

    def spy(model, contexts, params, **kw):
        calls.append((len(contexts), params.temperature))
        return [[11, 12, 13] for _ in contexts]

    monkeypatch.setattr(objective.sampler, "generate", spy)
    prompts = ["How do I tie a knot?", "What is rain?", "Why is the sky blue?", "Name a fish."]
    rollouts = objective.sample(objective.student_contexts(prompts))
    assert calls == [(2, 0.0), (2, objective.ctx.sampling.temperature)] and len(rollouts.responses) == 4
    assert rollouts.logprobs is None  # fp32 decoding: exactly on-policy
