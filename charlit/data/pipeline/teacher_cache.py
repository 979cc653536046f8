"""``python generate.py data=teacher_cache teacher=<t>``: score a conversations dataset once with a teacher and cache
its top-k next-token log-probs for ``teacher=cached`` (format: :mod:`charlit.teachers.topk_cache`).

The examples are exactly what ``method=distill`` trains on (every assistant turn of ``data.source``, rendered and
cut as the ``conversations`` data kind does), scored by the teacher the ``teacher`` group describes on the student
model's token ids, in shards of ``data.shard_examples`` examples: a killed run resumes at its first missing shard.
The directory's key hashes the format, the teacher's settings, the student model and tokenizer, ``k`` and the
examples, so changing any of them builds a new cache and never reads a stale one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from charlit.data.modules import build_datamodule
from charlit.data.pipeline.dataset import prepare_data, source_cfg
from charlit.data.pipeline.store import atomic_write_text, cache_key, data_cache_root, fingerprint
from charlit.kernels import topk_teacher
from charlit.models.heads import lm_head
from charlit.paths import exclusive_lock, inside
from charlit.progress import Progress
from charlit.settings import parse, setting
from charlit.teachers.topk_cache import (
    COMPLETE,
    FORMAT_VERSION,
    example_key,
    shard_written,
    tokenizer_fingerprint,
    write_shard,
)

STAGE = "teacher_cache"


@dataclass
class TeacherCacheSettings:
    k: int = setting(64, gt=0, help="teacher tokens kept per position (their log-probs; the rest is one tail mass)")
    batch_size: int = setting(8, gt=0, help="examples per teacher forward")
    shard_examples: int = setting(64, gt=0, help="examples per shard: the unit a killed run resumes from")


def _teacher_settings(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.teacher, resolve=True)


def build_teacher_cache(cfg: DictConfig) -> Path:
    """Build (or find complete) the cache ``cfg`` describes; returns its directory."""
    from charlit.models import load_model
    from charlit.models.frozen import FrozenReference
    from charlit.run import constitution_from_cfg
    from charlit.teachers import teacher_factory

    settings = parse(TeacherCacheSettings, cfg.data, "data", ignore=("name", "kind", "source"))
    if cfg.teacher.get("name") == "cached":
        raise ValueError(
            "data=teacher_cache scores with a teacher network and teacher=cached only reads a cache; pick the "
            "teacher to cache (teacher=self, fewshot, amplified or external)."
        )
    make_teacher = teacher_factory(cfg.teacher)  # the teacher's settings are checked before anything loads
    source = source_cfg(
        cfg,
        "conversations",
        "pick one with data@data.source=<variant> (teacher_replies, conversations, introspection, ...).",
    )
    constitution = constitution_from_cfg(cfg)
    dataset = prepare_data(source)
    loaded = load_model(cfg.model)
    tokenizer, policy = loaded.tokenizer, loaded.model
    examples = build_datamodule(
        source.data,
        constitution,
        tokenizer,
        "conversations",
        seed=int(cfg.seed),
        method="distill",
        conversation_format="all_turns",
        dataset_path=None if dataset is None else dataset.path,
    ).items
    keys = [example_key(e["prompt"], e["response_ids"]) for e in examples]
    material = {
        "format_version": FORMAT_VERSION,
        "teacher": _teacher_settings(cfg),
        "student": {"name_or_path": str(cfg.model.name_or_path), "dtype": str(cfg.model.get("dtype"))},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "k": settings.k,
        "shard_examples": settings.shard_examples,
        "examples": fingerprint(keys),
    }
    key = cache_key(material)
    root = data_cache_root(cfg.generation.get("cache_dir"))
    cache_dir = inside(root, STAGE, f"{constitution.name}-{key}", what="persona")
    if (cache_dir / COMPLETE).is_file():
        print(f"[charlit] teacher_cache: reusing {cache_dir}", flush=True)
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher(policy, FrozenReference(policy), tokenizer, constitution)
    vocab = lm_head(policy).weight.shape[0]
    shards = [
        list(range(i, min(i + settings.shard_examples, len(examples))))
        for i in range(0, len(examples), settings.shard_examples)
    ]
    start, covered, tokens = time.perf_counter(), [], 0
    with exclusive_lock(cache_dir / ".lock"), Progress(len(examples), "teacher cache", unit="example") as bar:
        for index, shard in enumerate(shards):
            if shard_written(cache_dir, index):
                bar.update(len(shard))
                continue
            rows = []
            for at in range(0, len(shard), settings.batch_size):
                batch = [examples[i] for i in shard[at : at + settings.batch_size]]
                rows += _score(teacher, batch, vocab, settings.k)
                bar.update(len(batch))
            write_shard(cache_dir, index, [keys[i] for i in shard], rows)
    for index in range(len(shards)):  # the mass the top-k covers, over every shard (resumed ones too)
        tail = load_file(str(inside(cache_dir, "shards", f"{index:05d}.safetensors")))["tail"]
        covered.append(1.0 - tail.double().exp())
        tokens += len(tail)
    mass = torch.cat(covered) if covered else torch.zeros(0, dtype=torch.float64)
    card = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": str(source.data.name),
        "source_path": None if dataset is None else str(dataset.path),
        "teacher": material["teacher"],
        "student": str(cfg.model.name_or_path),
        "tokenizer": material["tokenizer"],
        "k": settings.k,
        "examples": len(examples),
        "tokens": tokens,
        "shards": len(shards),
        "mass_covered": {
            "mean": float(mass.mean()) if len(mass) else None,
            "min": float(mass.min()) if len(mass) else None,
        },
        "bytes_per_token": settings.k * 8 + 4,
        "full_row_bytes_fp16": 2 * vocab,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(cache_dir / "key.json", json.dumps(material, indent=1, sort_keys=True))
    atomic_write_text(cache_dir / "card.json", json.dumps(card, indent=1))
    atomic_write_text(cache_dir / "card.md", card_markdown(card))
    atomic_write_text(cache_dir / COMPLETE, json.dumps({"key": key, "tokens": tokens}))
    return cache_dir


def _score(teacher, batch: list[dict], vocab: int, k: int) -> list[dict[str, torch.Tensor]]:
    """The top-k rows of each example of ``batch`` under ``teacher`` (on the student's first ``vocab`` ids)."""
    responses = [e["response_ids"] for e in batch]
    out = teacher.score([e["prompt"] for e in batch], responses)
    bias = None if out.bias is None else out.bias[:vocab]
    ids, logprobs, tail = topk_teacher(out.hidden, out.weight[:vocab], min(k, vocab), bias=bias, softcap=out.softcap)
    rows, at = [], 0
    for response in responses:
        n = len(response)
        rows.append({"ids": ids[at : at + n], "logprobs": logprobs[at : at + n], "tail": tail[at : at + n]})
        at += n
    return rows


def card_markdown(card: dict) -> str:
    mass = card["mass_covered"]
    lines = [
        f"# Teacher cache: {card['source']} scored by teacher={card['teacher'].get('name')}",
        "",
        f"- key: `{card['key']}`; student `{card['student']}` (tokenizer `{card['tokenizer']}`)",
        f"- {card['examples']} examples, {card['tokens']} response tokens in {card['shards']} shards, "
        f"{card['seconds']:.1f} s",
        f"- top-k: k = {card['k']}; teacher mass inside it: mean {mass['mean']:.4f}, min {mass['min']:.4f}"
        if mass["mean"] is not None
        else f"- top-k: k = {card['k']}",
        f"- size: {card['bytes_per_token']} bytes per token (a full fp16 row: {card['full_row_bytes_fp16']})",
        f"- teacher settings: `{json.dumps(card['teacher'], sort_keys=True)}`",
        "",
        "Train from it: `python train.py method=distill teacher=cached teacher.path=<this directory> "
        f"data={card['source']}`.",
    ]
    return "\n".join(lines) + "\n"
