"""data=robust: the prompt mix, what student and teacher see of an attacked prompt, and a tiny run on it."""

from collections import Counter

import pytest

from charlit.data.chat import student_messages, teacher_messages
from charlit.data.robust import Attacked, RobustSettings, attacks, format_requests, histories, robust_prompts
from charlit.run import train
from tests.conftest import compose

PLAIN = [f"Plain question number {i}?" for i in range(10)]


def _kind(item) -> str:
    if isinstance(item, Attacked):
        return item.kind
    if isinstance(item, list):
        return "multi_turn"
    return "plain" if item in PLAIN else "format" if item in format_requests() else "?"


def test_the_mix_has_the_asked_counts_by_largest_remainder():
    settings = RobustSettings(mix={"plain": 0.4, "format": 0.2, "multi_turn": 0.1, "suffix": 0.15, "buried": 0.15})
    items = robust_prompts(PLAIN, RobustSettings(**{**settings.__dict__, "size": 20}), seed=0)
    assert Counter(_kind(i) for i in items) == {"plain": 8, "format": 4, "multi_turn": 2, "suffix": 3, "buried": 3}
    # 7 items: exact shares 2.8, 1.4, 0.7, 1.05, 1.05 -> floors 2, 1, 0, 1, 1 and the two largest remainders
    small = robust_prompts(PLAIN, RobustSettings(**{**settings.__dict__, "size": 7}), seed=0)
    assert Counter(_kind(i) for i in small) == {"plain": 3, "format": 1, "multi_turn": 1, "suffix": 1, "buried": 1}
    assert robust_prompts(PLAIN, settings, seed=0) != robust_prompts(PLAIN, settings, seed=1)
    assert robust_prompts(PLAIN, settings, seed=3) == robust_prompts(PLAIN, settings, seed=3)
    assert len(robust_prompts(PLAIN, settings, seed=0)) == len(PLAIN)


def test_the_student_sees_the_attack_and_a_clean_teacher_does_not(pirate):
    only = {"suffix": 1.0}
    suffixed = robust_prompts(PLAIN, RobustSettings(mix=only, size=4), seed=0)
    for item in suffixed:
        student = student_messages(item)[-1]["content"]
        teacher = teacher_messages(item, pirate)
        assert any(student.endswith(s) for s in attacks()["suffixes"]) and student.startswith(teacher[-1]["content"])
        assert teacher[0]["role"] == "system" and teacher[-1]["content"] in PLAIN
    buried = robust_prompts(PLAIN, RobustSettings(mix={"buried": 1.0}, size=6), seed=0)
    instructions = [row["instruction"] for row in attacks()["buried"]]
    for item in buried:
        assert any(i in student_messages(item)[-1]["content"] for i in instructions)
        assert not any(i in teacher_messages(item, pirate)[-1]["content"] for i in instructions)
    attacked = robust_prompts(PLAIN, RobustSettings(mix=only, size=2, teacher_sees="attacked"), seed=0)
    assert all(teacher_messages(i, pirate)[1:] == student_messages(i) for i in attacked)


def test_multi_turn_items_end_with_a_user_turn_after_a_plain_assistant_turn():
    items = robust_prompts(PLAIN, RobustSettings(mix={"multi_turn": 1.0}, size=len(histories())), seed=0)
    assert all([m["role"] for m in item] == ["user", "assistant", "user"] for item in items)


def test_a_bad_mix_is_one_line_before_any_model_loads(tmp_path):
    cfg = compose(["data=robust", "+data.robust.mix.memes=2", "model=tiny", "logger=csv"])
    with pytest.raises(ValueError, match=r"data.robust.mix=.*unknown: memes"):
        train(cfg, tmp_path)


def test_self_distill_trains_on_the_robust_mix(tmp_path):
    cfg = compose(
        [
            "data=robust",
            "model=tiny",
            "logger=csv",
            "trainer.max_steps=2",
            "sampler.max_new_tokens=4",
            "data.val_size=2",
            "data.batch_size=4",
            "val.every_n_steps=0",
        ]
    )
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 2 and summary["data"] == "robust"
