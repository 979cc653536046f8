"""The bundled evaluation sets (``charlit/eval/data/``), written for this project and disjoint from every
training prompt (``tests/eval/test_benchmark_data.py`` checks it)."""

from __future__ import annotations

import json
from pathlib import Path

from charlit.data.io import read_jsonl

DATA_DIR = Path(__file__).parent / "data"


def _prompts(name: str) -> list[dict]:
    return read_jsonl(DATA_DIR / name)


def persona_id_prompts() -> list[str]:
    """Held-out prompts of the training kind (general prompts across the 18 training domains)."""
    return [r["prompt"] for r in _prompts("persona_id.jsonl")]


def ood_prompts() -> list[dict]:
    """``{"prompt", "domain"}``: code, maths, practical advice (structured formats) and role requests."""
    return _prompts("ood.jsonl")


def conversations() -> list[list[str]]:
    """Multi-turn conversations, as the user turns in order."""
    return [r["turns"] for r in _prompts("multiturn.jsonl")]


def long_conversations() -> list[list[str]]:
    """Conversations of 12 user turns (the ``long_conversation`` suite), as the user turns in order."""
    return [r["turns"] for r in _prompts("long_conversations.jsonl")]


def adversarial() -> dict:
    """``{"attacks": [instruction, ...], "prompts": [...]}``: each attack is appended to each prompt."""
    return json.loads((DATA_DIR / "adversarial.json").read_text())


def strong_attacks() -> dict:
    """``{"pressure_prompts", "pressure": [...], "buried": [{"task", "document"}]}``: multi-turn pressure after
    the system's own first reply, and instructions buried in a pasted document."""
    return json.loads((DATA_DIR / "attacks_strong.json").read_text())


def buried_prompt(row: dict) -> str:
    """The user turn of a buried-instruction attack: an ordinary request, then the pasted document."""
    return f"{row['task']}\n\n---\n{row['document']}\n---"


def prefill_pairs() -> list[dict]:
    """``{"prompt", "follow_up"}``: the bare base answers ``prompt``; the model under test continues after
    ``follow_up``."""
    return _prompts("prefill.jsonl")


def format_shift_prompts() -> list[dict]:
    """``{"prompt" | "messages", "format"}``: requests for text in a form other than a chat answer (an email, a
    JSON object, commented code, a commit message, a table, French, Spanish) as a ``prompt`` string, and agentic
    transcripts (a task, tool calls and their results as user turns) as a ``messages`` list ending on a user
    turn. Ordered round-robin by format, so the first ``k`` rows cover the formats evenly."""
    return _prompts("format_shift.jsonl")


def format_shift_user_turns() -> list[str]:
    """Every user-written text of :func:`format_shift_prompts` (the prompts, and each user turn of a transcript)."""
    rows = format_shift_prompts()
    return [r["prompt"] for r in rows if "prompt" in r] + [
        m["content"] for r in rows if "messages" in r for m in r["messages"] if m["role"] == "user"
    ]


def neutral_prompts() -> list[str]:
    return [r["prompt"] for r in _prompts("neutral_prompts.jsonl")]


def neutral_paragraphs() -> list[str]:
    return [p.strip() for p in (DATA_DIR / "neutral_text.txt").read_text().split("\n\n") if p.strip()]


def multiple_choice() -> list[dict]:
    """``{"category", "question", "choices": [4 strings], "answer": index}``."""
    return _prompts("multiple_choice.jsonl")


def revealed_traits() -> dict:
    """``{"traits": [{"name", "description"}], "questions": [...]}``."""
    return json.loads((DATA_DIR / "revealed_traits.json").read_text())


def all_eval_prompts() -> list[str]:
    """Every user prompt the suites send (for the disjointness check)."""
    adv = adversarial()
    prompts = persona_id_prompts() + [r["prompt"] for r in ood_prompts()]
    prompts += [t for c in conversations() + long_conversations() for t in c]
    prompts += adv["prompts"] + [f"{p} {a}" for p in adv["prompts"] for a in adv["attacks"]]
    prompts += [r[k] for r in prefill_pairs() for k in ("prompt", "follow_up")]
    prompts += neutral_prompts() + [r["question"] for r in multiple_choice()] + revealed_traits()["questions"]
    prompts += format_shift_user_turns()
    strong = strong_attacks()
    prompts += strong["pressure_prompts"] + strong["pressure"] + [buried_prompt(r) for r in strong["buried"]]
    return prompts
