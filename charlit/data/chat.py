"""Chat construction: what the student sees versus what the constitution-conditioned teacher sees.

The student always gets the bare prompt (the model's own default system prompt, if its template adds
one); the teacher gets the constitution as its system prompt. The constitution never reaches the student.
"""
from __future__ import annotations

from charlit.data.constitution import Constitution


def student_messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def teacher_messages(prompt: str, constitution: Constitution) -> list[dict]:
    return [{"role": "system", "content": constitution.system_prompt()}, {"role": "user", "content": prompt}]


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def conversation_ids_and_labels(tokenizer, messages: list[dict], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Tokenise a conversation; labels are the token ids on every assistant turn and -100 elsewhere.

    Each assistant turn spans from the end of the rendered prefix with a generation prompt to the end of
    the rendered prefix that includes the turn, so the template's end-of-turn token is trained too.
    """
    if not messages or not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("A training conversation needs at least one assistant message.")
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full_text.startswith(through) or not through.startswith(before):
            raise ValueError("The chat template does not render conversations prefix-consistently; "
                             "cannot locate assistant turns for loss masking.")
        start = len(tokenizer(before, add_special_tokens=False)["input_ids"]) if before else 0
        end = len(tokenizer(through, add_special_tokens=False)["input_ids"])
        labels[start:end] = ids[start:end]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels
