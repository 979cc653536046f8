"""teacher=external with another tokenizer: cross-tokenizer distillation (teacher.cross_tokenizer=true)."""

import pytest
import torch

from charlit.models.tiny import tiny_model
from charlit.teachers.cross_tokenizer import CrossTokenizerTeacherOutput
from tests.objectives.helpers import lowers_own_loss, response_logits, tiny_objective
from tests.teachers.test_external import PROMPTS, _word_level_tokenizer
from tests.teachers.tokenizers import byte_fallback_tokenizer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher over a SentencePiece-style byte-fallback tokenizer (not the student's)."""
    path = tmp_path_factory.mktemp("bf_teacher")
    tok = byte_fallback_tokenizer()
    tiny_model(len(tok), seed=5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _objective(method, teacher_dir, *extra):
    return tiny_objective(
        method, "teacher=external", f"teacher.name_or_path={teacher_dir}", "teacher.cross_tokenizer=true", *extra
    )


def test_without_the_setting_the_mismatch_error_names_cross_tokenizer_mode(teacher_dir):
    with pytest.raises(ValueError, match=r"uses a different tokenizer.*set teacher.cross_tokenizer=true"):
        tiny_objective("distill", "teacher=external", f"teacher.name_or_path={teacher_dir}")


def test_a_teacher_whose_text_cannot_be_aligned_is_refused_in_one_line(tmp_path):
    tok = _word_level_tokenizer(["ahoy", "matey"])
    tiny_model(len(tok), seed=3, pad_token_id=1, eos_token_id=2).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot be mapped to bytes") as err:
        _objective("distill", tmp_path)
    assert "\n" not in str(err.value)


def test_exact_positions_hold_the_teachers_own_distribution_read_over_the_student_vocabulary(teacher_dir):
    objective, _ = _objective("self_distill", teacher_dir, "teacher.top_k=8")
    teacher, student_tok = objective.teacher, objective.tokenizer
    text = "Arr, the sea is calm. 🦜"
    response = student_tok(text, add_special_tokens=False)["input_ids"] + [student_tok.eos_token_id]
    out = teacher.score(PROMPTS[:1], [response])
    assert isinstance(out, CrossTokenizerTeacherOutput) and out.unaligned == 0
    cross = teacher.cross
    teacher_ids, groups, _ = cross.retokenize(response)
    assert teacher_ids[-1] == cross.teacher_eot and groups[-1].exact  # EOS against the teacher's end of turn
    covered = sorted(out.exact_rows.tolist() + out.span_rows.tolist())
    assert covered == list(range(len(response)))  # every student token is in exactly one piece of the loss
    # reference: the teacher's full forward over its own tokens, float64, mapped and cut to the top-k
    logits = response_logits(teacher.model, teacher.context_ids(PROMPTS[0]), teacher_ids)
    exact_t = [g.t0 for g in groups if g.exact]
    p = torch.softmax(logits[exact_t], -1)
    vocab = objective.policy.get_output_embeddings().weight.shape[0]
    mass = torch.zeros(len(exact_t), vocab + 1, dtype=torch.float64)
    mass.index_add_(1, torch.where(cross.vocab_map >= 0, cross.vocab_map, vocab), p)
    top = mass[:, :vocab].topk(8)
    assert torch.equal(out.exact_ids, top.indices)
    torch.testing.assert_close(out.exact_logprobs.double(), top.values.log(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.exact_tail.double(), (1 - top.values.sum(-1)).log(), rtol=1e-4, atol=1e-4)
    # spans: the teacher's merged top-k is its first-token top-k plus the log-prob of the rest of the span
    span_groups = [g for g in groups if not g.exact]
    logp = torch.log_softmax(logits, -1)
    for merged, g in zip(out.span_teacher, span_groups):
        rest = sum(logp[j, teacher_ids[j]] for j in range(g.t0 + 1, g.t1))
        torch.testing.assert_close(merged.double(), logp[g.t0].topk(8).values + rest, rtol=1e-4, atol=1e-4)


def test_a_sample_cut_inside_a_character_is_aligned_up_to_it(teacher_dir):
    objective, _ = _objective("self_distill", teacher_dir)
    tok = objective.tokenizer
    # "the", " sea", " \xf0\x9f", "\xa6", "\x9c" without its last piece: it ends inside the emoji's bytes, so the
    # last two pieces (the space travels with the emoji's first bytes) are left out
    response = tok("the sea 🦜", add_special_tokens=False)["input_ids"][:-1]
    teacher_ids, groups, left_out = objective.teacher.cross.retokenize(response)
    assert left_out == 2 and groups[-1].s1 == len(response) - 2
    assert objective.teacher.teacher_tokenizer.decode(teacher_ids) == "the sea"


@pytest.mark.parametrize("method", ["distill", "on_policy_distill"])
def test_distillation_from_a_teacher_with_another_tokenizer_lowers_its_loss(teacher_dir, method):
    # on_policy_distill at lmbda=0: the teacher-written replies only, so the batch is fixed
    objective, data = _objective(method, teacher_dir, *(["method.lmbda=0"] if method == "on_policy_distill" else []))
    batch = next(iter(data.train_dataloader()))
    first, last = lowers_own_loss(objective, batch, steps=4, lr=3e-3)
    assert torch.isfinite(torch.tensor(first)) and last < first


def test_settings_that_need_the_full_teacher_distribution_are_refused(teacher_dir):
    objective, data = _objective("self_distill", teacher_dir, "method.repeat_penalty=0.5")
    with pytest.raises(ValueError, match="method.repeat_penalty needs the teacher's full next-token distribution"):
        objective.compute_loss(next(iter(data.train_dataloader())))


def test_a_loss_temperature_other_than_one_is_refused(teacher_dir):
    objective, data = _objective("distill", teacher_dir, "method.temperature=2")
    with pytest.raises(ValueError, match="at temperature 1, but method.temperature=2.*set method.temperature=1"):
        objective.compute_loss(next(iter(data.train_dataloader())))
