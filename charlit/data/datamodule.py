"""Lightning data modules: prompt sets for on-policy methods, conversations for SFT.

Every data module also serves the held-out prompts used by the shared validation.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from charlit.data.chat import conversation_ids_and_labels
from charlit.data.constitution import Constitution
from charlit.data.prompts import dedupe, load_prompt_set, read_jsonl

CONVERSATION_DIR = Path(__file__).parent / "conversations"
DATA_KINDS = ("prompts", "conversations")


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
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=len(self.train) >= self.batch_size,
                          collate_fn=_as_list, generator=generator)


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
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.examples, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate,
                          generator=generator, drop_last=len(self.examples) >= self.batch_size)


def build_datamodule(cfg, constitution: Constitution, tokenizer, data_kind: str, seed: int = 0, method: str = "?"):
    """The data module for ``cfg`` (the ``data`` group), checked against what the objective consumes."""
    if cfg.kind != data_kind:
        raise ValueError(f"method={method} trains on {data_kind} but data={cfg.get('name', cfg.kind)} provides {cfg.kind}; "
                         f"pick a data config of kind {data_kind}.")
    if data_kind == "prompts":
        train = training_prompts(cfg.train_sets, constitution)
        return PromptDataModule(train, heldout_prompts(cfg, train), int(cfg.batch_size), int(cfg.val_batch_size), seed)
    if data_kind == "conversations":
        path = Path(cfg.path) if cfg.get("path") else CONVERSATION_DIR / f"{constitution.name}.jsonl"
        if not path.is_file():
            raise ValueError(f"No conversations at {path}: set data.path to a JSONL of {{'messages': [...]}} rows "
                             f"(bundled sets exist for: {', '.join(sorted(p.stem for p in CONVERSATION_DIR.glob('*.jsonl')))}).")
        conversations = load_conversations(path)
        return ConversationDataModule(conversations, tokenizer, heldout_prompts(cfg, []), int(cfg.batch_size),
                                      int(cfg.val_batch_size), int(cfg.max_length), seed)
    raise ValueError(f"data.kind={data_kind!r} is not supported; valid kinds: {', '.join(DATA_KINDS)}.")
