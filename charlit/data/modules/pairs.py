"""Preference pairs for DPO (TRL's conversational format: ``data.path``, a generated dataset or the persona's
bundled set), tokenised as ``context_ids`` / ``chosen_ids`` / ``rejected_ids`` and served as lists."""

from __future__ import annotations

from dataclasses import dataclass

from charlit.data.chat import last_user_turn, render_response_ids
from charlit.data.io import PAIR_DIR, load_pairs, resolve_data_path
from charlit.data.modules.base import DATA_MODULES, IGNORED_KEYS, DataModule, DataSettings
from charlit.data.prompts import heldout_prompts
from charlit.settings import parse, setting


@dataclass
class PairSettings(DataSettings):
    path: str | None = setting(None, help="JSONL of prompt/chosen/rejected rows; null = generated; 'bundled'")
    max_length: int = setting(512, gt=0, help="tokens per example (context + response); longer responses are cut")


def pair_examples(tokenizer, pairs: list[dict], max_length: int) -> list[dict]:
    examples = []
    for row in pairs:
        context_ids, chosen = render_response_ids(tokenizer, row["prompt"], row["chosen"][0])
        _, rejected = render_response_ids(tokenizer, row["prompt"], row["rejected"][0])
        room = max(max_length - len(context_ids), 1)
        example = {
            "prompt": row["prompt"],
            "context_ids": context_ids,
            "chosen_ids": chosen[:room],
            "rejected_ids": rejected[:room],
        }
        if row.get("ref_chosen_logp") is not None:
            if len(chosen) > room or len(rejected) > room:
                raise ValueError(
                    f"A pair with precomputed reference log-probs is longer than "
                    f"data.max_length={max_length} tokens; raise data.max_length so the stored log-probs "
                    f"still match the responses."
                )
            example.update(
                ref_chosen_logp=float(row["ref_chosen_logp"]), ref_rejected_logp=float(row["ref_rejected_logp"])
            )
        examples.append(example)
    return examples


@DATA_MODULES.register("pairs")
class PairData(DataModule):
    Settings = PairSettings  # parsed by from_config, and by charlit.run.check_settings before any model loads
    empty_message = "No training pairs left after tokenisation; check data.path and data.max_length."

    @classmethod
    def from_config(cls, data_cfg, *, constitution, tokenizer, conversation_format, seed, dataset_path=None):
        settings = parse(cls.Settings, data_cfg, "data", ignore=IGNORED_KEYS)
        pairs = load_pairs(
            resolve_data_path(settings.path, PAIR_DIR, constitution.name, "preference pairs", generated=dataset_path)
        )
        heldout = heldout_prompts(settings.heldout_set, settings.val_size, [last_user_turn(p["prompt"]) for p in pairs])
        return cls(pair_examples(tokenizer, pairs, settings.max_length), heldout, settings, seed)
