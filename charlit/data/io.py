"""Reading training data files: JSON Lines, chat conversations and preference pairs, each row validated.

Every error names the file and the row (or line) at fault. One validator, :func:`check_messages`, checks
every message list: a non-empty list of ``{"role": "system" | "user" | "assistant", "content": <non-empty
string>}`` dicts.
"""

from __future__ import annotations

import json
from pathlib import Path

CONVERSATION_DIR = Path(__file__).parent / "conversations"
PAIR_DIR = Path(__file__).parent / "pairs"
ROLES = ("system", "user", "assistant")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON Lines (UTF-8); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {path} does not exist.")
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({err.reason}); save the file as UTF-8.") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def check_messages(messages, where: str) -> list[dict]:
    """``messages`` if it is a valid message list; otherwise a ``ValueError`` starting with ``where``."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of messages, got {messages!r}.")
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
            or not m["content"].strip()
        ):
            raise ValueError(
                f"{where} has a message without a valid role ({'/'.join(ROLES)}) and non-empty string content: {m!r}."
            )
    return messages


def load_conversations(path: Path) -> list[list[dict]]:
    """The ``messages`` of every ``{"messages": [...]}`` row; each needs an assistant turn to train on."""
    conversations = []
    for i, row in enumerate(read_jsonl(path), 1):
        messages = check_messages(row.get("messages"), f"{path}: row {i}: 'messages'")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}: row {i} has no assistant message to train on.")
        conversations.append(messages)
    if not conversations:
        raise ValueError(f"{path}: no conversations.")
    return conversations


def load_pairs(path: Path) -> list[dict]:
    """Preference rows in TRL's conversational format, validated; errors name the file and row.

    ``prompt``: messages ending with a user turn; ``chosen`` / ``rejected``: a list with one assistant message.
    Optional ``ref_chosen_logp`` / ``ref_rejected_logp``: the reference model's summed log-probs of the response
    tokens (as this tokenizer and chat template render them), given on every row or on none.
    """
    pairs, with_ref = [], []
    for i, row in enumerate(read_jsonl(path), 1):
        prompt = check_messages(row.get("prompt"), f"{path}: row {i}: 'prompt'")
        if prompt[-1]["role"] != "user":
            raise ValueError(f"{path}: row {i}: 'prompt' must end with a user turn, got {prompt[-1]!r}.")
        for key in ("chosen", "rejected"):
            value = check_messages(row.get(key), f"{path}: row {i}: {key!r}")
            if len(value) != 1 or value[0]["role"] != "assistant":
                raise ValueError(
                    f"{path}: row {i}: {key!r} must be a list with exactly one assistant message "
                    f"({{'role': 'assistant', 'content': ...}}), got {value!r}."
                )
        refs = [row.get("ref_chosen_logp"), row.get("ref_rejected_logp")]
        has_ref = any(r is not None for r in refs)
        if has_ref and not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r <= 0 for r in refs):
            raise ValueError(
                f"{path}: row {i}: 'ref_chosen_logp' and 'ref_rejected_logp' must both be numbers <= 0 "
                f"(summed log-probs), got {refs}."
            )
        with_ref.append(has_ref)
        pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs.")
    if any(with_ref) and not all(with_ref):
        missing = with_ref.index(False) + 1
        raise ValueError(
            f"{path}: row {missing} has no reference log-probs but other rows do; give "
            f"'ref_chosen_logp'/'ref_rejected_logp' on every row or on none."
        )
    return pairs


def resolve_data_path(given: str | None, directory: Path, persona: str, what: str, generated=None) -> Path:
    """The file to read: ``generated`` (a dataset the pipeline made) when given, else ``data.path``: a JSONL file, or
    null / ``bundled`` for the persona's bundled set in ``directory``."""
    if generated:
        return Path(generated)
    path = Path(given) if given and given != "bundled" else directory / f"{persona}.jsonl"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in directory.glob("*.jsonl")))
        raise ValueError(
            f"No {what} at {path}: set data.path to a JSONL file of them (bundled sets exist for: {bundled})."
        )
    return path
