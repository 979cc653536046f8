"""The bundled evaluation sets: disjoint from every training prompt, big enough, and correct."""

import re
from collections import Counter

from charlit.data import robust
from charlit.data.constitution import bundled_personas, resolve_persona
from charlit.data.prompts import load_prompt_set
from charlit.eval import benchmark_data
from charlit.eval.build_judge_data import judge_prompts


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _training_prompts() -> set[str]:
    prompts = load_prompt_set("general_train") + load_prompt_set("general_heldout")
    prompts += [q for name in bundled_personas() for q in resolve_persona(name).questions]
    prompts += robust.all_training_texts()  # data=robust: format requests, histories and attack texts
    return {_norm(p) for p in prompts}


def test_eval_prompts_are_disjoint_from_training_validation_and_persona_questions():
    training = _training_prompts()
    overlap = [p for p in benchmark_data.all_eval_prompts() if _norm(p) in training]
    assert not overlap, overlap
    # also no near-copies: an eval prompt containing a whole training prompt (or the reverse)
    evals = {_norm(p) for p in benchmark_data.all_eval_prompts()}
    contained = [(e, t) for e in evals for t in training if len(t) > 20 and (t in e or e in t)]
    assert not contained, contained[:3]


def test_judge_prompts_are_disjoint_from_eval_prompts_and_between_splits():
    splits = judge_prompts(20, 10)
    assert not set(splits["train"]) & set(splits["heldout"])
    evals = {_norm(p) for p in benchmark_data.all_eval_prompts()}
    assert not evals & {_norm(p) for p in splits["train"] + splits["heldout"]}


def test_format_shift_prompts_are_disjoint_from_training_and_the_other_eval_sets():
    shifted = benchmark_data.format_shift_user_turns()
    rows = benchmark_data.format_shift_prompts()
    user_turns = sum(1 if "prompt" in r else sum(m["role"] == "user" for m in r["messages"]) for r in rows)
    assert len(shifted) == user_turns and len({_norm(p) for p in shifted}) == len(shifted)  # each written once
    everything = benchmark_data.all_eval_prompts()
    assert set(shifted) <= set(everything)  # so the tests above screen them too
    others = {_norm(p) for p in (Counter(everything) - Counter(shifted)).elements()}  # each format-shift turn once
    judge = judge_prompts(20, 10)
    screened = _training_prompts() | others | {_norm(p) for p in judge["train"] + judge["heldout"]}
    for prompt in map(_norm, shifted):
        assert prompt not in screened, prompt
        assert not [t for t in screened if len(t) > 20 and (t in prompt or prompt in t)], prompt


def test_format_shift_rows_cover_every_format_round_robin():
    rows = benchmark_data.format_shift_prompts()
    formats = ["email", "json", "code", "commit", "table", "french", "spanish", "agentic"]
    assert all(sum(r["format"] == f for r in rows) >= 6 for f in formats) and len(rows) >= 48
    assert [r["format"] for r in rows] == [formats[i % len(formats)] for i in range(len(rows))]
    for row in rows:
        if row["format"] != "agentic":
            assert set(row) == {"prompt", "format"} and isinstance(row["prompt"], str), row
            continue
        assert set(row) == {"messages", "format"}, row
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] and len(roles) >= 3, roles
        assert all(m["content"].startswith("Tool result:") for m in row["messages"][2::2]), row


def test_suite_sets_have_the_documented_sizes():
    assert len(benchmark_data.persona_id_prompts()) >= 24
    assert len(benchmark_data.ood_prompts()) >= 24
    assert {r["domain"] for r in benchmark_data.ood_prompts()} == {"code", "maths", "practical advice", "role requests"}
    assert len(benchmark_data.adversarial()["attacks"]) >= 8
    assert len(benchmark_data.prefill_pairs()) >= 8
    assert all(len(c) >= 5 for c in benchmark_data.conversations())
    assert len(benchmark_data.neutral_paragraphs()) >= 16
    assert len(benchmark_data.revealed_traits()["traits"]) >= 8
    strong = benchmark_data.strong_attacks()
    assert len(strong["pressure"]) >= 8 and len(strong["buried"]) >= 8 and len(strong["pressure_prompts"]) >= 4


def test_buried_attacks_hide_the_instruction_inside_the_document_not_the_request():
    cue = ("persona", "character", "style", "role-play", "neutral")
    for row in benchmark_data.strong_attacks()["buried"]:
        assert not any(word in row["task"].lower() for word in cue), row["task"]
        assert any(word in row["document"].lower() for word in cue), row["document"]
        prompt = benchmark_data.buried_prompt(row)
        assert prompt.startswith(row["task"]) and row["document"] in prompt


def test_multiple_choice_items_are_well_formed_and_unambiguous():
    items = benchmark_data.multiple_choice()
    assert len(items) >= 100
    assert len({i["question"] for i in items}) == len(items)
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4, item
        assert 0 <= item["answer"] < 4
    # every arithmetic item's keyed answer is the true value
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "times": lambda a, b: a * b,
        "divided by": lambda a, b: a / b,
    }
    arithmetic = [i for i in items if i["category"] == "arithmetic"]
    assert len(arithmetic) >= 30
    for item in arithmetic:
        a, op, b = re.fullmatch(r"What is (\d+) (\+|-|times|divided by) (\d+)\?", item["question"]).groups()
        assert float(item["choices"][item["answer"]]) == ops[op](int(a), int(b)), item
    # answer positions are spread, so a position bias cannot score well
    positions = [i["answer"] for i in items]
    assert max(positions.count(k) for k in range(4)) < 0.35 * len(items)
