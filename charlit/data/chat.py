"""Chat construction: what the student sees versus what the constitution-conditioned teacher sees.

The student always gets the bare prompt (the model's own default system prompt, if its template adds
one); the teacher gets the constitution as its system prompt. The constitution never reaches the student.
"""

from __future__ import annotations

from charlit.data.constitution import Constitution


def as_messages(prompt) -> list[dict]:
    """A prompt as a message list: a string is one user turn; a list (a conversation so far, ending with a
    user turn) is returned as a copy; an attacked training prompt (:class:`charlit.data.robust.Attacked`) gives
    the student's view."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in getattr(prompt, "student", prompt)]


def student_messages(prompt) -> list[dict]:
    return as_messages(prompt)


def last_user_turn(messages: list[dict]) -> str | None:
    """The content of the last user message (None when there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def with_system(messages: list[dict], system: str) -> list[dict]:
    """``messages`` with ``system`` as the system prompt; an existing system message is kept after it."""
    messages = [dict(m) for m in messages]
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def teacher_messages(
    prompt: str | list[dict], constitution: Constitution, exemplars: list[dict] | None = None
) -> list[dict]:
    """The teacher's view: the constitution as system prompt, then optional exemplar turns, then the prompt (for an
    attacked training prompt, its ``teacher`` view: see :mod:`charlit.data.robust`)."""
    messages = as_messages(getattr(prompt, "teacher", prompt))
    system = [m for m in messages[:1] if m.get("role") == "system"]
    rest = messages[len(system) :]
    return with_system([*system, *(exemplars or []), *rest], constitution.system_prompt())


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_response_ids(tokenizer, context: list[dict], response: dict) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` (with the generation prompt) and of the assistant ``response`` that follows it.

    The response ids run to the end of the rendered turn, so they include the template's end-of-turn token.
    """
    before = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    through = tokenizer.apply_chat_template([*context, response], tokenize=False)
    context_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    full = tokenizer(through, add_special_tokens=False)["input_ids"]
    if not through.startswith(before) or full[: len(context_ids)] != context_ids:
        raise ValueError(
            "The chat template does not render conversations prefix-consistently; "
            "cannot separate the response tokens from the prompt."
        )
    return context_ids, full[len(context_ids) :]


def conversation_ids_and_labels(
    tokenizer, messages: list[dict], max_length: int | None = None
) -> tuple[list[int], list[int]]:
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
            raise ValueError(
                "The chat template does not render conversations prefix-consistently; "
                "cannot locate assistant turns for loss masking."
            )
        start = len(tokenizer(before, add_special_tokens=False)["input_ids"]) if before else 0
        end = len(tokenizer(through, add_special_tokens=False)["input_ids"])
        labels[start:end] = ids[start:end]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels
