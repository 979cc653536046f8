"""What every generation stage shares: its cache key, chunked resumable generation, filtering and its card.

A stage subclass says what its items are (:meth:`Stage.items`), how to generate a chunk of them
(:meth:`Stage.work`, raw rows) and how to turn all raw rows into dataset rows (:meth:`Stage.assemble`).
:func:`run_stage` does the rest: reuse a complete cached result, otherwise generate missing chunks, filter,
write the data and its card atomically.

A stage that ``data.generate.stages`` can name registers a builder ``(cfg, ctx, generator, teacher) -> Stage``
with ``@STAGES.register("<name>")`` in its module (``teacher()`` loads ``generation.teacher_model`` on first use,
or returns ``generator``); third parties use the ``charlit.data_stages`` entry-point group.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from charlit.data.constitution import Constitution
from charlit.data.pipeline.card import build_card, card_markdown
from charlit.data.pipeline.filters import FilterSettings
from charlit.data.pipeline.generator import Generator
from charlit.data.pipeline.store import StageDir, run_chunks
from charlit.registry import Registry


@dataclass
class StageContext:
    constitution: Constitution
    filters: FilterSettings
    seed: int
    chunk_size: int
    root: Path
    sampler: dict  # backend name and batch size (batching can change sampled tokens)
    on_chunk: Callable[[int], None] | None = None
    generation: dict[str, dict] = field(default_factory=dict)  # stage name -> its card's generation cost


@dataclass
class Assembled:
    rows: list[dict]
    counts: dict  # generated / kept / dropped by reason (+ stage-specific figures)
    lengths: list[int] = field(default_factory=list)  # reply lengths (tokens) of what was kept


@dataclass
class StageResult:
    name: str
    path: Path
    rows: list[dict]
    card: dict


def persona_material(constitution: Constitution) -> dict:
    data = asdict(constitution)
    data.pop("source")
    return data


class Stage(ABC):
    name: str
    version: int  # bump when the stage's code changes what it generates: old cache entries stop matching

    def __init__(self, ctx: StageContext, generators: list[Generator]):
        self.ctx = ctx
        self.generators = generators

    @abstractmethod
    def items(self) -> list:
        """The work items, in a fixed order (JSON-serialisable: they go into the cache key)."""

    @abstractmethod
    def settings(self) -> dict:
        """Stage-specific settings that change what is generated (they go into the cache key and the card)."""

    @abstractmethod
    def work(self, chunk: list, seed: int) -> list[dict]:
        """Generate raw rows for ``chunk`` of items, seeded by ``seed`` only."""

    @abstractmethod
    def assemble(self, raw: list[dict]) -> Assembled:
        """Filter raw rows (all chunks, in order) into dataset rows and count what was dropped and why."""

    def key_material(self) -> dict:
        return {
            "stage": self.name,
            "version": self.version,
            "persona": persona_material(self.ctx.constitution),
            "generators": [{"role": g.role, **g.identity} for g in self.generators],
            "sampling": asdict(self.generators[0].params),
            "sampler": self.ctx.sampler,
            "seed": self.ctx.seed,
            "chunk_size": self.ctx.chunk_size,
            "filters": asdict(self.ctx.filters),
            "settings": self.settings(),
            "items": self.items(),
        }


StageBuilder = Callable[[DictConfig, StageContext, Generator, Callable[[], Generator]], Stage]
STAGES: Registry[StageBuilder] = Registry(
    "data stage", "charlit.data.pipeline", "charlit.data_stages", "data.generate.stages"
)


def read_complete(store: StageDir) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in store.data_path.read_text().splitlines() if line.strip()]
    return rows, json.loads(store.card_path.read_text())


def run_stage(stage: Stage) -> StageResult:
    """The stage's dataset: read from the cache when complete, otherwise generated (resuming finished chunks)."""
    ctx = stage.ctx
    material = stage.key_material()
    store = StageDir(ctx.root, stage.name, ctx.constitution.name, material)
    if store.is_complete():
        rows, card = read_complete(store)
        print(f"[charlit] {stage.name}: reusing {len(rows)} cached rows from {store.path}", flush=True)
        ctx.generation[stage.name] = card["generation"]
        return StageResult(stage.name, store.data_path, rows, card)
    distinct = list({id(g): g for g in stage.generators}.values())

    def counter() -> int:
        return sum(g.new_tokens for g in distinct)

    results = run_chunks(
        store,
        stage.items(),
        ctx.chunk_size,
        stage.work,
        counter,
        ctx.seed,
        desc=stage.name,
        on_chunk=ctx.on_chunk,
        flops=lambda: sum(g.flops for g in distinct),
    )
    raw = [row for r in results for row in r.rows]
    assembled = stage.assemble(raw)
    card = build_card(
        stage.name,
        store.key,
        str(store.data_path),
        assembled.rows,
        {stage.name: assembled.counts},
        assembled.lengths,
        sum(r.new_tokens for r in results),
        sum(r.seconds for r in results),
        {k: material[k] for k in ("sampling", "sampler", "seed", "chunk_size", "filters", "settings")}
        | {"generators": material["generators"]},
        flops=sum(r.flops for r in results),
    )
    store.finish(assembled.rows, card, card_markdown(card))
    ctx.generation[stage.name] = card["generation"]
    return StageResult(stage.name, store.data_path, assembled.rows, card)
