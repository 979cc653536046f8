"""The on-disk teacher cache: per response token, the teacher's top-k token ids and log-probs and the log of the
probability mass left outside them, in safetensors shards (no pickle), looked up by example.

Layout of ``<cache root>/teacher_cache/<persona>-<key>/`` (``key`` hashes everything that determines the numbers:
format version, teacher settings, student tokenizer, k and the examples; see
:mod:`charlit.data.pipeline.teacher_cache`)::

    key.json              what the key was computed from
    shards/00000.safetensors  ids [n, k] int32, logprobs [n, k] fp32, tail [n] fp32, lengths [examples] int32
    shards/00000.json     the example keys of that shard, in order (written after its tensors)
    card.json / card.md   what was scored, by which teacher, the mass the top-k covers, size and time
    COMPLETE              written last: only a directory with it is ever read

An example is one assistant turn: the conversation before it (``prompt``) and its token ids (``response``); its
key hashes both, so a training batch finds its rows whatever order the data loader serves them in. The cache is
treated as written by someone else: shard names must stay inside the directory, tensors are checked for shape,
dtype and range, and a cache built with another tokenizer is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from charlit.paths import inside

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
TENSORS = ("ids", "logprobs", "tail", "lengths")


def example_key(prompt, response: list[int]) -> str:
    """The cache key of one example: its prompt (a string or message list) and response token ids."""
    text = json.dumps([prompt, [int(t) for t in response]], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the token ↔ id map: two tokenizers with the same fingerprint give responses the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:20]


def shard_path(cache_dir: Path, index: int) -> Path:
    return Path(cache_dir) / "shards" / f"{index:05d}.safetensors"


def write_shard(cache_dir: Path, index: int, keys: list[str], rows: list[dict[str, torch.Tensor]]) -> None:
    """One shard: the examples ``keys`` with their rows (``ids``, ``logprobs``, ``tail`` per example), written
    atomically; the key list last, so a shard counts as written only when both files are in place."""
    path = shard_path(cache_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "ids": torch.cat([r["ids"] for r in rows]).to(torch.int32).contiguous(),
        "logprobs": torch.cat([r["logprobs"] for r in rows]).float().contiguous(),
        "tail": torch.cat([r["tail"] for r in rows]).float().contiguous(),
        "lengths": torch.tensor([len(r["tail"]) for r in rows], dtype=torch.int32),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _atomic_text(path.with_suffix(".json"), json.dumps(keys))


def shard_written(cache_dir: Path, index: int) -> bool:
    path = shard_path(cache_dir, index)
    return path.is_file() and path.with_suffix(".json").is_file()


def _atomic_text(path: Path, text: str) -> None:
    from charlit.data.pipeline.store import atomic_write_text

    atomic_write_text(path, text)


@dataclass
class TopKRows:
    """Every cached example's rows, concatenated; ``where[key] = (start, length)``."""

    ids: torch.Tensor  # [T, k] int64
    logprobs: torch.Tensor  # [T, k] fp32
    tail: torch.Tensor  # [T] fp32
    where: dict[str, tuple[int, int]]
    card: dict

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def read_cache(cache_dir: str | Path, tokenizer, vocab_size: int) -> TopKRows:
    """Load a complete cache for a student with ``tokenizer`` and ``vocab_size`` lm_head rows; one-line errors for
    an unfinished cache, another tokenizer, or shards that do not hold what the card says."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    if not (cache_dir / COMPLETE).is_file():
        raise ValueError(
            f"teacher.path={cache_dir} is not a finished teacher cache (no {COMPLETE} marker); build one with "
            f"`python generate.py data=teacher_cache teacher=<the teacher>` and pass the directory it prints."
        )
    card = json.loads((cache_dir / "card.json").read_text())
    if card.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"teacher cache {cache_dir} has format version {card.get('format_version')!r}, this charlit reads "
            f"{FORMAT_VERSION}; rebuild it with `python generate.py data=teacher_cache`."
        )
    mine = tokenizer_fingerprint(tokenizer)
    if card.get("tokenizer") != mine:
        raise ValueError(
            f"teacher cache {cache_dir} was built for a student tokenizer with fingerprint {card.get('tokenizer')!r} "
            f"({card.get('student')}), but this student's is {mine!r}: its token ids would mean other tokens. Build "
            f"a cache for this model (`python generate.py data=teacher_cache model=...`)."
        )
    parts, keys = [], []
    for index in range(int(card["shards"])):
        path = inside(cache_dir, "shards", f"{index:05d}.safetensors", what="teacher cache shard")
        shard = load_file(str(path))
        names = json.loads(path.with_suffix(".json").read_text())
        _check_shard(shard, names, int(card["k"]), vocab_size, path)
        parts.append(shard)
        keys += names
    ids = torch.cat([p["ids"] for p in parts]).long()
    lengths = torch.cat([p["lengths"] for p in parts]).long().tolist()
    where, start = {}, 0
    for key, length in zip(keys, lengths):
        where[key] = (start, length)
        start += length
    return TopKRows(
        ids=ids,
        logprobs=torch.cat([p["logprobs"] for p in parts]),
        tail=torch.cat([p["tail"] for p in parts]),
        where=where,
        card=card,
    )


def _check_shard(shard: dict, names: list, k: int, vocab_size: int, path: Path) -> None:
    missing = [name for name in TENSORS if name not in shard]
    if missing:
        raise ValueError(f"teacher cache shard {path} lacks {missing}; the cache is damaged, rebuild it.")
    ids, logprobs, tail, lengths = (shard[name] for name in TENSORS)
    rows = int(lengths.sum()) if len(lengths) else 0
    problems = []
    if ids.dtype != torch.int32 or logprobs.dtype != torch.float32 or tail.dtype != torch.float32:
        problems.append(f"dtypes {ids.dtype}, {logprobs.dtype}, {tail.dtype} (want int32, float32, float32)")
    if tuple(ids.shape) != (rows, k) or tuple(logprobs.shape) != (rows, k) or tuple(tail.shape) != (rows,):
        problems.append(f"shapes {tuple(ids.shape)}, {tuple(logprobs.shape)}, {tuple(tail.shape)} for {rows} rows")
    elif rows and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        problems.append(f"token ids outside [0, {vocab_size})")
    if len(names) != len(lengths) or not all(isinstance(n, str) for n in names):
        problems.append(f"{len(names)} example keys for {len(lengths)} examples")
    if problems:
        raise ValueError(f"teacher cache shard {path} is damaged: {'; '.join(problems)}. Rebuild the cache.")
