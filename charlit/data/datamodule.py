"""Lightning data modules: prompt sets for on-policy methods, conversations for SFT and distillation,
preference pairs for DPO.

Every data module also serves the held-out prompts used by the shared validation.

Conversations come in one of three batch formats, chosen by the objective (``conversation_format``):
``tokens`` (padded ``input_ids``/``labels`` with every assistant turn labelled, for SFT), ``all_turns``
(one example per assistant turn: the conversation before it as the prompt, the turn as a fixed response)
or ``last_turn`` (one example per conversation: everything before the last assistant turn, and that turn).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from charlit.data.chat import conversation_ids_and_labels, render_response_ids
from charlit.data.constitution import Constitution
from charlit.data.loader import train_loader
from charlit.data.prompts import dedupe, load_prompt_set, read_jsonl

CONVERSATION_DIR = Path(__file__).parent / "conversations"
PAIR_DIR = Path(__file__).parent / "pairs"
DATA_KINDS = ("prompts", "conversations", "pairs")
CONVERSATION_FORMATS = ("tokens", "all_turns", "last_turn")


def _as_list(batch):
    return batch


def training_prompts(sets, constitution: Constitution) -> list[str]:
    """Union of prompt sets; the special set ``constitution`` is the persona's own example questions."""
    prompts: list[str] = []
    for name in sets:
        prompts += constitution.questions if name == "constitution" else load_prompt_set(name)
    return dedupe(prompts)


def heldout_prompts(cfg, exclude: list[str]) -> list[str]:
    """The held-out set minus anything that also appears in training, first ``val_size`` of them."""
    seen = {" ".join(p.lower().split()) for p in exclude}
    prompts = [p for p in load_prompt_set(cfg.heldout_set) if " ".join(p.lower().split()) not in seen]
    return prompts[: int(cfg.val_size)]


class _HeldOutMixin:
    def val_dataloader(self):
        return DataLoader(self.heldout, batch_size=self.val_batch_size, shuffle=False, collate_fn=_as_list)


class PromptDataModule(_HeldOutMixin, L.LightningDataModule):
    def __init__(self, train: list[str], heldout: list[str], batch_size: int, val_batch_size: int, seed: int = 0):
        super().__init__()
        if not train:
            raise ValueError("The training prompt set is empty; check data.train_sets.")
        self.train, self.heldout = train, heldout
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed

    def train_dataloader(self):
        return train_loader(self.train, self.batch_size, self.seed, _as_list, self.trainer)


def load_conversations(path: Path) -> list[list[dict]]:
    rows = read_jsonl(path)
    conversations = []
    for i, row in enumerate(rows, 1):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}: row {i} has no non-empty 'messages' list.")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ValueError(f"{path}: row {i} has a message without a valid role (system/user/assistant) and string content: {m!r}.")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}: row {i} has no assistant message to train on.")
        conversations.append(messages)
    if not conversations:
        raise ValueError(f"{path}: no conversations.")
    return conversations


class ConversationDataModule(_HeldOutMixin, L.LightningDataModule):
    def __init__(self, conversations: list[list[dict]], tokenizer, heldout: list[str], batch_size: int,
                 val_batch_size: int, max_length: int, seed: int = 0):
        super().__init__()
        self.examples = [conversation_ids_and_labels(tokenizer, c, max_length) for c in conversations]
        self.pad_id = tokenizer.pad_token_id
        self.heldout, self.batch_size, self.val_batch_size, self.seed = heldout, batch_size, val_batch_size, seed

    def collate(self, items):
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def train_dataloader(self):
        return train_loader(self.examples, self.batch_size, self.seed, self.collate, self.trainer)


def conversation_turns(conversations: list[list[dict]], which: str = "all") -> list[tuple[list[dict], dict]]:
    """(prompt messages, assistant message) for every assistant turn (``all``) or the last one (``last``)."""
    turns = []
    for messages in conversations:
        idx = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
        for i in (idx if which == "all" else idx[-1:]):
            turns.append((messages[:i], messages[i]))
    return turns


class ExampleDataModule(_HeldOutMixin, L.LightningDataModule):
    """Tokenised examples (dicts) served as plain lists; the objective packs them."""

    def __init__(self, examples: list[dict], heldout: list[str], batch_size: int, val_batch_size: int, seed: int = 0,
                 what: str = "examples"):
        super().__init__()
        if not examples:
            raise ValueError(f"No training {what} left after tokenisation; check data.path and data.max_length.")
        self.examples, self.heldout = examples, heldout
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed

    def train_dataloader(self):
        return train_loader(self.examples, self.batch_size, self.seed, _as_list, self.trainer)


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


def _messages_ok(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        and m["content"].strip() for m in messages)


def load_pairs(path: Path) -> list[dict]:
    """Preference rows in TRL's conversational format, validated; errors name the file and row.

    ``prompt``: messages ending with a user turn; ``chosen`` / ``rejected``: a list with one assistant message.
    Optional ``ref_chosen_logp`` / ``ref_rejected_logp``: the reference model's summed log-probs of the response
    tokens (as this tokenizer and chat template render them), given on every row or on none.
    """
    rows = read_jsonl(path)
    pairs, with_ref = [], []
    for i, row in enumerate(rows, 1):
        prompt = row.get("prompt")
        if not _messages_ok(prompt) or prompt[-1]["role"] != "user":
            raise ValueError(f"{path}: row {i}: 'prompt' must be a non-empty list of messages (role system/user/assistant, "
                             f"non-empty string content) ending with a user turn.")
        for key in ("chosen", "rejected"):
            value = row.get(key)
            if not _messages_ok(value) or len(value) != 1 or value[0]["role"] != "assistant":
                raise ValueError(f"{path}: row {i}: {key!r} must be a list with exactly one assistant message "
                                 f"({{'role': 'assistant', 'content': ...}}), got {value!r}.")
        refs = [row.get("ref_chosen_logp"), row.get("ref_rejected_logp")]
        has_ref = any(r is not None for r in refs)
        if has_ref and not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r <= 0 for r in refs):
            raise ValueError(f"{path}: row {i}: 'ref_chosen_logp' and 'ref_rejected_logp' must both be numbers <= 0 "
                             f"(summed log-probs), got {refs}.")
        with_ref.append(has_ref)
        pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs.")
    if any(with_ref) and not all(with_ref):
        missing = with_ref.index(False) + 1
        raise ValueError(f"{path}: row {missing} has no reference log-probs but other rows do; give "
                         f"'ref_chosen_logp'/'ref_rejected_logp' on every row or on none.")
    return pairs


def pair_examples(tokenizer, pairs: list[dict], max_length: int) -> list[dict]:
    examples = []
    for row in pairs:
        context_ids, chosen = render_response_ids(tokenizer, row["prompt"], row["chosen"][0])
        _, rejected = render_response_ids(tokenizer, row["prompt"], row["rejected"][0])
        room = max(max_length - len(context_ids), 1)
        example = {"prompt": row["prompt"], "context_ids": context_ids, "chosen_ids": chosen[:room],
                   "rejected_ids": rejected[:room]}
        if row.get("ref_chosen_logp") is not None:
            if len(chosen) > room or len(rejected) > room:
                raise ValueError(f"A pair with precomputed reference log-probs is longer than data.max_length={max_length} "
                                 f"tokens; raise data.max_length so the stored log-probs still match the responses.")
            example.update(ref_chosen_logp=float(row["ref_chosen_logp"]), ref_rejected_logp=float(row["ref_rejected_logp"]))
        examples.append(example)
    return examples


def _last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _resolve(cfg, directory: Path, persona: str, what: str) -> Path:
    """``data.path``: a JSONL file, or null / ``bundled`` for the persona's bundled set in ``directory``."""
    given = cfg.get("path")
    path = Path(given) if given and given != "bundled" else directory / f"{persona}.jsonl"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in directory.glob("*.jsonl")))
        raise ValueError(f"No {what} at {path}: set data.path to a JSONL file of them (bundled sets exist for: {bundled}).")
    return path


def build_datamodule(cfg, constitution: Constitution, tokenizer, data_kind, seed: int = 0, method: str = "?",
                     conversation_format: str = "tokens"):
    """The data module for ``cfg`` (the ``data`` group), checked against what the objective consumes.

    ``data_kind`` is the kind the objective trains on, or a tuple of kinds it accepts.
    """
    kinds = (data_kind,) if isinstance(data_kind, str) else tuple(data_kind)
    if cfg.kind not in kinds:
        raise ValueError(f"method={method} trains on {' or '.join(kinds)} but data={cfg.get('name', cfg.kind)} provides "
                         f"{cfg.kind}; pick a data config of kind {' or '.join(kinds)} (e.g. data={kinds[0]}).")
    data_kind = cfg.kind
    if conversation_format not in CONVERSATION_FORMATS:
        raise ValueError(f"conversation_format={conversation_format!r}; valid: {', '.join(CONVERSATION_FORMATS)}.")
    if data_kind == "pairs":
        path = _resolve(cfg, PAIR_DIR, constitution.name, "preference pairs")
        pairs = load_pairs(path)
        examples = pair_examples(tokenizer, pairs, int(cfg.max_length))
        heldout = heldout_prompts(cfg, [_last_user(p["prompt"]) for p in pairs])
        return ExampleDataModule(examples, heldout, int(cfg.batch_size), int(cfg.val_batch_size), seed, "pairs")
    if data_kind == "conversations" and conversation_format != "tokens":
        path = _resolve(cfg, CONVERSATION_DIR, constitution.name, "conversations")
        which = "all" if conversation_format == "all_turns" else "last"
        examples = turn_examples(tokenizer, load_conversations(path), which, int(cfg.max_length))
        return ExampleDataModule(examples, heldout_prompts(cfg, []), int(cfg.batch_size), int(cfg.val_batch_size), seed,
                                 "assistant turns")
    if data_kind == "prompts":
        train = training_prompts(cfg.train_sets, constitution)
        return PromptDataModule(train, heldout_prompts(cfg, train), int(cfg.batch_size), int(cfg.val_batch_size), seed)
    if data_kind == "conversations":
        path = _resolve(cfg, CONVERSATION_DIR, constitution.name, "conversations ({'messages': [...]} rows)")
        conversations = load_conversations(path)
        return ConversationDataModule(conversations, tokenizer, heldout_prompts(cfg, []), int(cfg.batch_size),
                                      int(cfg.val_batch_size), int(cfg.max_length), seed)
    raise ValueError(f"data.kind={data_kind!r} is not supported; valid kinds: {', '.join(DATA_KINDS)}.")
