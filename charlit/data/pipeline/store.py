"""The on-disk cache of generated datasets: content-addressed stage directories, atomic writes, resumable chunks.

A stage's output lives in ``<cache root>/<stage>/<persona>-<key>/`` where ``key`` hashes everything that
determines the result (see :func:`cache_key`). Inside::

    key.json         what the key was computed from (for people reading the cache)
    chunks/00000.json  raw generations of chunk 0, written atomically when the chunk finishes
    data.jsonl       the filtered dataset
    card.json/.md    the dataset card
    COMPLETE         written last: only a directory with this marker is ever read as a dataset

Generation walks the items in fixed-order chunks; a chunk already on disk is read back instead of being
generated again, so a run killed halfway resumes without duplicates or gaps. Each chunk is seeded from
``(seed, chunk index)`` alone, so the resumed dataset equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from charlit.models.bundled import cache_root
from charlit.progress import Progress

COMPLETE = "COMPLETE"


def data_cache_root(cache_dir: str | None) -> Path:
    """``generation.cache_dir``, or ``data/`` under charlit's cache (``$CHARLIT_CACHE`` or ``~/.cache/charlit``)."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "data"


def fingerprint(value) -> str:
    """SHA-256 of a JSON-serialisable value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(material: dict) -> str:
    return fingerprint(material)[:20]


def chunk_seed(seed: int, index: int, salt: str = "") -> int:
    """A seed for chunk ``index`` that depends only on ``(seed, index, salt)``, never on global RNG state."""
    digest = hashlib.sha256(f"{seed}:{index}:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@dataclass(frozen=True)
class ChunkResult:
    rows: list[dict]
    new_tokens: int  # tokens generated for this chunk
    seconds: float  # generation wall time of this chunk


class StageDir:
    """One cached stage output (see the module docstring for the layout)."""

    def __init__(self, root: Path, stage: str, persona: str, material: dict):
        self.key = cache_key(material)
        self.material = material
        self.stage = stage
        self.path = Path(root) / stage / f"{persona}-{self.key}"

    @property
    def data_path(self) -> Path:
        return self.path / "data.jsonl"

    @property
    def card_path(self) -> Path:
        return self.path / "card.json"

    def is_complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def _chunk_path(self, index: int) -> Path:
        return self.path / "chunks" / f"{index:05d}.json"

    def read_chunk(self, index: int) -> ChunkResult | None:
        path = self._chunk_path(index)
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return ChunkResult(rows=raw["rows"], new_tokens=int(raw["new_tokens"]), seconds=float(raw["seconds"]))

    def write_chunk(self, index: int, result: ChunkResult) -> None:
        atomic_write_text(
            self._chunk_path(index),
            json.dumps(
                {"rows": result.rows, "new_tokens": result.new_tokens, "seconds": result.seconds}, ensure_ascii=False
            ),
        )

    def finish(self, rows: Sequence[dict], card: dict, card_md: str) -> Path:
        """Write the dataset and its card, then the COMPLETE marker (last, so readers never see a partial set)."""
        atomic_write_text(self.path / "key.json", json.dumps(self.material, indent=1, sort_keys=True, default=str))
        write_jsonl(self.data_path, rows)
        atomic_write_text(self.card_path, json.dumps(card, indent=1, ensure_ascii=False))
        atomic_write_text(self.path / "card.md", card_md)
        atomic_write_text(self.path / COMPLETE, json.dumps({"rows": len(rows), "key": self.key}))
        return self.data_path


def run_chunks(
    store: StageDir,
    items: Sequence,
    chunk_size: int,
    work: Callable[[list, int], list[dict]],
    counter: Callable[[], int],
    seed: int,
    desc: str,
    on_chunk: Callable[[int], None] | None = None,
) -> list[ChunkResult]:
    """Run ``work(chunk_items, chunk_seed)`` over ``items`` in fixed-order chunks, reusing chunks already on disk.

    ``counter()`` returns the generator's running count of new tokens (for the throughput in the card);
    ``on_chunk(index)`` is called after each chunk is safely on disk.
    """
    if chunk_size < 1:
        raise ValueError(f"generation.chunk_size={chunk_size} must be >= 1.")
    chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    results: list[ChunkResult | None] = [store.read_chunk(i) for i in range(len(chunks))]
    done = sum(len(c) for c, r in zip(chunks, results) if r is not None)
    with Progress(len(items), desc, unit="item", initial=done) as bar:
        for index, chunk in enumerate(chunks):
            if results[index] is not None:
                continue
            tokens, start = counter(), time.perf_counter()
            rows = work(chunk, chunk_seed(seed, index, store.stage))
            result = ChunkResult(rows=rows, new_tokens=counter() - tokens, seconds=time.perf_counter() - start)
            store.write_chunk(index, result)
            results[index] = result
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(index)
    return results
