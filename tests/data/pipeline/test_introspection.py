"""Reflection and interaction stages: format, no constitution in saved rows, guidance that reaches the model,
format breaks filtered and counted."""

import json

from charlit.data.chat import conversation_ids_and_labels, render_prompt_ids
from charlit.data.io import load_conversations
from charlit.data.pipeline import generate_dataset
from charlit.data.pipeline.filters import FilterSettings
from charlit.data.pipeline.interaction import (
    INTERACTION_NOTE,
    LEADING_TOPICS,
    InteractionStage,
    opening,
    saved_views,
    speaker_view,
    system_prompt,
)
from charlit.data.pipeline.reflection import REFLECTION_PROMPTS
from charlit.data.pipeline.stage import StageContext
from tests.data.pipeline.helpers import tiny_cfg


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _no_constitution(rows, constitution):
    text = json.dumps(rows)
    return all(t.statement not in text for t in constitution.traits) and "Your character, in your own words" not in text


def test_reflection_rows(tmp_path, pirate):
    assert len(REFLECTION_PROMPTS) >= 10
    dataset = generate_dataset(tiny_cfg(tmp_path, "reflection", "data.generate.reflection.per_type=1"))
    rows = _rows(dataset.path)
    assert len(rows) == len(REFLECTION_PROMPTS)
    assert {r["messages"][0]["content"] for r in rows} == set(REFLECTION_PROMPTS.values())
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert _no_constitution(rows, pirate)
    assert len(load_conversations(dataset.path)) == len(rows)


def test_interaction_rows_both_sides_end_on_assistant(tmp_path, pirate, tokenizer):
    cfg = tiny_cfg(
        tmp_path, "interaction", "data.generate.interaction.conversations=3", "data.generate.interaction.turns=4"
    )
    dataset = generate_dataset(cfg)
    rows = _rows(dataset.path)
    assert len(rows) == 6  # 3 conversations x both sides
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * 2  # 4 messages: each side wrote two
        ids, labels = conversation_ids_and_labels(tokenizer, r["messages"])
        assert sum(label != -100 for label in labels) > 0
    a_side = [r for r in rows if r["source"].endswith("/a")]
    b_side = [r for r in rows if r["source"].endswith("/b")]
    for a, b in zip(a_side, b_side):  # the same conversation seen from both sides
        assert a["messages"][1]["content"] == b["messages"][0]["content"]
        assert a["messages"][2]["content"] == b["messages"][1]["content"]
    assert _no_constitution(rows, pirate)
    counts = dataset.card["stages"]["interaction"]
    assert counts["conversations"] == 3 and counts["generated"] == 12 and counts["rows"] == 6


def test_leading_guidance_reaches_both_instances(pirate, tokenizer):
    opener, topic = opening(1, "leading")
    assert topic == LEADING_TOPICS[1] and topic in opener
    system = system_prompt(pirate, topic)
    transcript = ["First message from A.", "Reply from B."]
    for speaker in ("a", "b"):
        view = speaker_view(transcript, opener, speaker, system)
        rendered = tokenizer.decode(render_prompt_ids(tokenizer, view))
        assert topic in rendered and INTERACTION_NOTE in rendered and pirate.traits[0].statement in rendered
        assert rendered.rstrip().endswith("<|im_start|>assistant")
    a_view = speaker_view(transcript, opener, "a", system)
    assert [m["role"] for m in a_view] == ["system", "user", "assistant", "user"]
    assert a_view[1]["content"] == opener and a_view[3]["content"] == "Reply from B."
    b_view = speaker_view(transcript, opener, "b", system)
    assert [m["role"] for m in b_view] == ["system", "user", "assistant"]
    free_opener, free_topic = opening(0, "free")
    assert free_topic is None and all(t not in system_prompt(pirate, None) for t in LEADING_TOPICS)
    saved = saved_views(transcript, opener)
    assert [side for side, _ in saved] == ["a", "b"]
    assert saved[0][1] == [
        {"role": "user", "content": opener},
        {"role": "assistant", "content": "First message from A."},
    ]


def test_a_format_break_ends_the_conversation_and_is_counted(tmp_path, pirate):
    def reply(text, finished=True, broken=False):
        return {"text": text, "n_tokens": 8, "finished": finished, "format_break": broken}

    raw = [
        {
            "index": 0,
            "opening": "free",
            "opener": "Hi",
            "topic": None,
            "transcript": ["a1", "b1"],
            "replies": [reply("a1"), reply("b1"), reply("a2 User: b2", broken=True)],
            "stop": "format_break",
        },
        {
            "index": 1,
            "opening": "leading",
            "opener": "Hi",
            "topic": "t",
            "transcript": [],
            "replies": [reply("cut off", finished=False)],
            "stop": "unfinished",
        },
    ]
    ctx = StageContext(pirate, FilterSettings(), 0, 4, tmp_path, {"name": "hf", "batch_size": 4})
    out = InteractionStage(ctx, None, 2, 4, ["free", "leading"]).assemble(raw)
    assert out.counts["dropped"] == {"format_break": 1, "unfinished": 1}
    assert out.counts["generated"] == 4 and out.counts["kept"] == 2 and out.counts["conversations_full_length"] == 0
    assert [r["messages"] for r in out.rows] == [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a1"}],
        [{"role": "user", "content": "a1"}, {"role": "assistant", "content": "b1"}],
    ]


def test_introspection_combines_both_stages_and_reuses_them(tmp_path):
    per_type = "data.generate.reflection.per_type=1"
    reflection = generate_dataset(tiny_cfg(tmp_path, "reflection", per_type))
    stamp = reflection.path.stat().st_mtime_ns
    combined = generate_dataset(
        tiny_cfg(
            tmp_path,
            "introspection",
            per_type,
            "data.generate.interaction.conversations=2",
            "data.generate.interaction.turns=2",
        )
    )
    rows = _rows(combined.path)
    assert rows[: len(REFLECTION_PROMPTS)] == _rows(reflection.path)
    assert len(rows) == len(REFLECTION_PROMPTS) + 4
    assert set(combined.card["stages"]) == {"reflection", "interaction"}
    assert combined.card["rows"] == len(rows)
    assert reflection.path.stat().st_mtime_ns == stamp  # the cached reflection stage was reused
