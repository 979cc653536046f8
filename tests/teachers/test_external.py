import pytest
import torch

from charlit.models.tiny import tiny_model
from charlit.teachers.external import ExternalTeacher
from tests.objectives.helpers import response_logits, tiny_objective

PROMPTS = ["How do I fold a paper boat?", "What makes bread rise?"]


def test_tiny_external_teacher_has_own_weights_and_scores_with_constitution():
    objective, _ = tiny_objective("self_distill", "teacher=external", "teacher.name_or_path=tiny", "teacher.seed=1")
    teacher = objective.teacher
    assert isinstance(teacher, ExternalTeacher)
    student_w = objective.policy.get_input_embeddings().weight
    teacher_w = teacher.model.get_input_embeddings().weight
    assert student_w.shape == teacher_w.shape and not torch.equal(student_w, teacher_w)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    responses = [objective.tokenizer("Arr, fold it twice!", add_special_tokens=False)["input_ids"]] * 2
    out = teacher.score(PROMPTS, responses)
    context = teacher.context_ids(PROMPTS[0])
    assert objective.constitution.traits[0].statement in objective.tokenizer.decode(context)
    expected = response_logits(teacher.model, context, responses[0])
    got = out.hidden[: len(responses[0])].double() @ out.weight.double().T
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5)
    loss, _, _ = objective.compute_loss(PROMPTS)  # the whole objective runs with it
    assert torch.isfinite(loss) and loss.item() > 0


def test_padded_teacher_vocabulary_is_accepted(tmp_path):
    objective, _ = tiny_objective("self_distill")
    vocab = len(objective.tokenizer)
    padded = tiny_model(
        vocab + 64, seed=2, eos_token_id=objective.tokenizer.eos_token_id, pad_token_id=objective.tokenizer.pad_token_id
    )
    padded.save_pretrained(tmp_path)
    objective.tokenizer.save_pretrained(tmp_path)
    objective, _ = tiny_objective("self_distill", "teacher=external", f"teacher.name_or_path={tmp_path}")
    assert objective.teacher.model.get_output_embeddings().weight.shape[0] == vocab + 64
    loss, _, _ = objective.compute_loss(PROMPTS)
    assert torch.isfinite(loss)


def _word_level_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *words])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return tok


def test_mismatched_tokenizer_fails_clearly_naming_what_still_works(tmp_path):
    tok = _word_level_tokenizer(["ahoy", "matey", "sea", "ship"])
    tiny_model(len(tok), seed=3, pad_token_id=1, eos_token_id=2).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        tiny_objective("distill", "teacher=external", f"teacher.name_or_path={tmp_path}")
    message = str(err.value)
    assert f"teacher.name_or_path='{tmp_path}' uses a different tokenizer" in message
    assert "vocab sizes" in message and "method=sft" in message and "method=dpo" in message


def test_external_teacher_refuses_same_network_weight_settings():
    with pytest.raises(ValueError, match="method.teacher_weights='live'.*teacher_weights=frozen"):
        tiny_objective("self_distill", "teacher=external", "teacher.name_or_path=tiny", "method.teacher_weights=live")
    with pytest.raises(ValueError, match="teacher.name_or_path is required"):
        tiny_objective("self_distill", "teacher=external")
