import json

import pytest

from charlit.data.io import CONVERSATION_DIR, load_conversations
from charlit.teachers.fewshot import FewShotTeacher, load_exemplars
from tests.objectives.helpers import tiny_objective


def test_fewshot_context_is_constitution_then_exemplars_then_prompt():
    objective, _ = tiny_objective("self_distill", "teacher=fewshot", "teacher.num_exemplars=2")
    teacher = objective.teacher
    assert isinstance(teacher, FewShotTeacher)
    bundled = load_conversations(CONVERSATION_DIR / "pirate.jsonl")
    text = objective.tokenizer.decode(teacher.context_ids("How do I fold a paper boat?"))
    marks = [
        objective.constitution.traits[0].statement,
        bundled[0][0]["content"],
        bundled[0][1]["content"],
        bundled[1][1]["content"],
        "How do I fold a paper boat?",
    ]
    positions = [text.find(m) for m in marks]
    assert -1 not in positions and positions == sorted(positions)
    assert bundled[2][1]["content"] not in text  # only num_exemplars exchanges
    # the student never sees the exemplars or the constitution
    bare = objective.tokenizer.decode(teacher.bare_context_ids("How do I fold a paper boat?"))
    assert bundled[0][1]["content"] not in bare and marks[0] not in bare


def test_custom_exemplars_and_clear_errors(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Ahoy there!"}]})
        + "\n"
    )
    assert load_exemplars(path, "pirate", 1) == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Ahoy there!"},
    ]
    with pytest.raises(ValueError, match=r"only 1 user/assistant exchanges for teacher.num_exemplars=3"):
        load_exemplars(path, "pirate", 3)
    with pytest.raises(ValueError, match=r"no bundled exemplars for persona 'sarcastic'.*teacher.exemplars"):
        load_exemplars(None, "sarcastic", 2)
