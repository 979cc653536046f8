"""Conversations (``{"messages": [...]}`` rows: ``data.path``, a generated dataset or the persona's bundled set)
in the batch format the objective asks for (``conversation_format``):

* ``tokens``: right-padded ``input_ids`` / ``attention_mask`` / ``labels`` with every assistant turn labelled (SFT);
* ``all_turns``: one example per assistant turn: the conversation before it as the prompt, the turn as a fixed
  response;
* ``last_turn``: one example per conversation: everything before its last assistant turn, and that turn.

Held-out prompts are screened against the last user turn of every training conversation (``tokens``) or turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from charlit.data.chat import conversation_ids_and_labels, last_user_turn, render_response_ids
from charlit.data.io import CONVERSATION_DIR, PAIR_DIR, load_conversations, load_pairs, resolve_data_path
from charlit.data.modules.base import DATA_MODULES, IGNORED_KEYS, DataModule, DataSettings, as_list, collate_tokens
from charlit.data.prompts import heldout_prompts
from charlit.settings import parse, setting

CONVERSATION_FORMATS = ("tokens", "all_turns", "last_turn")
PAIR_SIDES = ("chosen", "rejected")


@dataclass
class ConversationSettings(DataSettings):
    path: str | None = setting(None, help="JSONL of {'messages': [...]} rows; null = generated or the bundled set")
    max_length: int = setting(512, gt=0, help="tokens per example (context + response); longer ones are cut")
    from_pairs: str | None = setting(
        None,
        choices=(None, *PAIR_SIDES),
        help="read preference pairs and keep one side's replies (chosen: the teacher's)",
    )


def pair_replies(pairs: list[dict], side: str) -> list[list[dict]]:
    """Each pair as a conversation: its prompt followed by its ``side`` reply. With the pipeline's pairs,
    ``chosen`` is the constitution-prompted teacher's reply, so off-policy arms learn from the same replies DPO
    prefers (the cache key leaves out the data variant's name: both read one generated set)."""
    return [row["prompt"] + row[side][:1] for row in pairs]


def conversation_turns(conversations: list[list[dict]], which: str = "all") -> list[tuple[list[dict], dict]]:
    """(prompt messages, assistant message) for every assistant turn (``all``) or the last one (``last``)."""
    turns = []
    for messages in conversations:
        idx = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
        for i in idx if which == "all" else idx[-1:]:
            turns.append((messages[:i], messages[i]))
    return turns


def turn_examples(tokenizer, conversations: list[list[dict]], which: str, max_length: int) -> list[dict]:
    """One example per chosen assistant turn: ``prompt`` (messages), ``context_ids``, ``response_ids``.

    The response is cut so context + response fit ``max_length``; turns with no room left are dropped.
    """
    examples = []
    for context, response in conversation_turns(conversations, which):
        if context[-1]["role"] != "user":
            continue
        context_ids, response_ids = render_response_ids(tokenizer, context, response)
        response_ids = response_ids[: max(max_length - len(context_ids), 0)]
        if response_ids:
            examples.append({"prompt": context, "context_ids": context_ids, "response_ids": response_ids})
    return examples


@DATA_MODULES.register("conversations")
class ConversationData(DataModule):
    Settings = ConversationSettings  # parsed by from_config, and by charlit.run.check_settings before any model loads
    empty_message = "No training assistant turns left after tokenisation; check data.path and data.max_length."

    @classmethod
    def from_config(cls, data_cfg, *, constitution, tokenizer, conversation_format, seed, dataset_path=None):
        if conversation_format not in CONVERSATION_FORMATS:
            raise ValueError(f"conversation_format={conversation_format!r}; valid: {', '.join(CONVERSATION_FORMATS)}.")
        settings = parse(cls.Settings, data_cfg, "data", ignore=IGNORED_KEYS)
        if settings.from_pairs:
            path = resolve_data_path(settings.path, PAIR_DIR, constitution.name, "preference pairs", dataset_path)
            conversations = pair_replies(load_pairs(path), settings.from_pairs)
        else:
            what = "conversations ({'messages': [...]} rows)"
            conversations = load_conversations(
                resolve_data_path(settings.path, CONVERSATION_DIR, constitution.name, what, generated=dataset_path)
            )
        if conversation_format == "tokens":
            items = [conversation_ids_and_labels(tokenizer, c, settings.max_length) for c in conversations]
            prompts = [last_user_turn(c) for c in conversations]
            collate = partial(collate_tokens, pad_id=tokenizer.pad_token_id)
        else:
            which = "all" if conversation_format == "all_turns" else "last"
            items = turn_examples(tokenizer, conversations, which, settings.max_length)
            prompts = [last_user_turn(e["prompt"]) for e in items]
            collate = as_list
        heldout = heldout_prompts(settings.heldout_set, settings.val_size, [p for p in prompts if p is not None])
        return cls(items, heldout, settings, seed, collate)
