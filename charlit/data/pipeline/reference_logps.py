"""``python generate.py data=reference_logps``: score preference pairs once with DPO's reference model and write
them back with ``ref_chosen_logp`` / ``ref_rejected_logp``, so ``method=dpo`` trains without a reference forward.

The pairs are ``data.source`` (default: the generated ``pairs``), tokenised exactly as the ``pairs`` data kind does
for training (:func:`charlit.data.modules.pairs.pair_examples`, the same ``max_length``); the reference is the model
the ``model`` group describes before training (with LoRA, the base without an adapter), and a sequence log-prob
is the sum of its response tokens' log-probs, as the DPO objective computes it. The output directory's key
hashes the model, the tokenizer, ``max_length`` and the rows, so any change builds a new file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from charlit.data.io import PAIR_DIR, load_pairs, resolve_data_path
from charlit.data.modules.pairs import pair_examples
from charlit.data.pipeline.dataset import prepare_data, source_cfg
from charlit.data.pipeline.store import atomic_write_text, cache_key, data_cache_root, fingerprint
from charlit.models.sequences import paired_response_logps, segment_sum
from charlit.paths import exclusive_lock, inside
from charlit.progress import Progress
from charlit.settings import parse, setting
from charlit.teachers.topk_cache import tokenizer_fingerprint

STAGE = "reference_logps"
FORMAT_VERSION = 1
COMPLETE = "COMPLETE"


@dataclass
class ReferenceLogpsSettings:
    batch_size: int = setting(8, gt=0, help="pairs per reference forward")


@torch.no_grad()
def sequence_logps(model, tokenizer, examples: list[dict]) -> torch.Tensor:
    """``[2, n]``: the summed log-probs of each example's chosen and rejected response under ``model``."""
    contexts = [e["context_ids"] for e in examples]
    chosen, rejected = [e["chosen_ids"] for e in examples], [e["rejected_ids"] for e in examples]
    token_logps, _, _ = paired_response_logps(model, contexts, chosen, rejected, tokenizer.pad_token_id)
    return segment_sum(token_logps, [len(r) for r in chosen + rejected]).reshape(2, len(examples))


def build_reference_logps(cfg: DictConfig) -> Path:
    """Write (or find complete) the scored pairs ``cfg`` describes; returns the JSONL file."""
    from charlit.models import load_model
    from charlit.run import constitution_from_cfg

    settings = parse(ReferenceLogpsSettings, cfg.data, "data", ignore=("name", "kind", "source"))
    source = source_cfg(
        cfg, "pairs", "pick pairs with data@data.source=pairs (and data.source.path=<file> for your own)."
    )
    constitution = constitution_from_cfg(cfg)
    dataset = prepare_data(source)
    path = resolve_data_path(
        source.data.get("path"), PAIR_DIR, constitution.name, "preference pairs", generated=dataset and dataset.path
    )
    rows = load_pairs(path)
    max_length = int(source.data.get("max_length", 512))
    loaded = load_model(cfg.model, apply_lora=False)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    material = {
        "format_version": FORMAT_VERSION,
        "model": {"name_or_path": str(cfg.model.name_or_path), "dtype": str(cfg.model.get("dtype"))},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "rows": fingerprint([json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True) for r in rows]),
    }
    key = cache_key(material)
    out_dir = inside(
        data_cache_root(cfg.generation.get("cache_dir")), STAGE, f"{constitution.name}-{key}", what="persona"
    )
    out = out_dir / "data.jsonl"
    if (out_dir / COMPLETE).is_file():
        print(f"[charlit] reference_logps: reusing {out_dir}", flush=True)
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]  # stored values are recomputed
    examples = pair_examples(tokenizer, plain, 1 << 30)  # uncut: stored log-probs must cover whole responses
    longest = max(len(e["context_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples)
    if longest > max_length:
        raise ValueError(
            f"data=reference_logps: a pair of {path} is {longest} tokens long (prompt + response), more than "
            f"data.source.max_length={max_length}; training would cut it and the stored log-probs would no longer "
            f"match: set data.source.max_length={longest} here and data.max_length={longest} for training."
        )
    start, scored = time.perf_counter(), []
    with exclusive_lock(out_dir / ".lock"), Progress(len(examples), "reference log-probs", unit="pair") as bar:
        for at in range(0, len(examples), settings.batch_size):
            batch = examples[at : at + settings.batch_size]
            logps = sequence_logps(model, tokenizer, batch)
            scored += [
                {**row, "ref_chosen_logp": float(c), "ref_rejected_logp": float(r)}
                for row, c, r in zip(plain[at : at + len(batch)], logps[0].tolist(), logps[1].tolist())
            ]
            bar.update(len(batch))
    card = {
        "key": key,
        "source": str(path),
        "model": material["model"],
        "tokenizer": material["tokenizer"],
        "max_length": max_length,
        "pairs": len(scored),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in scored))
    atomic_write_text(out_dir / "card.json", json.dumps(card, indent=1))
    atomic_write_text(
        out_dir / "card.md",
        f"# DPO reference log-probs\n\n- {card['pairs']} pairs from `{card['source']}`, scored by "
        f"`{material['model']['name_or_path']}` (max_length {max_length}) in {card['seconds']:.1f} s\n\n"
        f"Train from it: `python train.py method=dpo data=pairs data.path={out} data.max_length={max_length}`.\n",
    )
    atomic_write_text(out_dir / COMPLETE, json.dumps({"key": key, "pairs": len(scored)}))
    return out
