"""From a composed config to a dataset on disk: which stages a ``data`` variant runs, with which models.

``data.generate.stages`` lists the stages (the names registered in :data:`~charlit.data.pipeline.stage.STAGES`:
``pairs``, ``reflection``, ``interaction``); their settings sit beside it (``data.generate.<stage>``), and what
they share (sampling, filters, chunking, cache) is the ``generation`` block of ``conf/train.yaml``. One stage's
output is the dataset; several are concatenated into a combined, equally cached dataset (``introspection`` =
reflection + interaction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from charlit.data.constitution import resolve_persona
from charlit.data.pipeline.card import build_card, card_markdown
from charlit.data.pipeline.filters import FilterSettings
from charlit.data.pipeline.generator import Generator, build_generator
from charlit.data.pipeline.stage import STAGES, StageContext, StageResult, read_complete, run_stage
from charlit.data.pipeline.store import StageDir, data_cache_root
from charlit.paths import inside

COMBINE_VERSION = 1


@dataclass
class Dataset:
    name: str
    path: Path
    card: dict
    generation: dict[str, dict] = field(default_factory=dict)  # stage name -> its generation cost (card block)


def needs_generation(data_cfg) -> bool:
    """A data variant with a ``generate`` block and no ``path`` is made by the pipeline."""
    return data_cfg.get("generate") is not None and not data_cfg.get("path")


def generation_sampler(cfg: DictConfig):
    """The backend that writes generated data: ``generation.sampler`` when a config selects one
    (``sampler@generation.sampler=vllm``: vLLM for the fixed-weight pipeline while on-policy training samples with
    ``sampler=hf``), else the training sampler."""
    return cfg.generation.get("sampler") or cfg.sampler


def _teacher_model_cfg(cfg: DictConfig):
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.update(name_or_path=str(cfg.generation.teacher_model), tokenizer=None, chat_template=None)
    return OmegaConf.create(model)


def _combine(name: str, results: list[StageResult], ctx: StageContext) -> Dataset:
    store = StageDir(
        ctx.root, name, ctx.constitution.name, {"combine": [r.card["key"] for r in results], "version": COMBINE_VERSION}
    )
    if store.is_complete():
        _, card = read_complete(store)
        return Dataset(name, store.data_path, card)
    rows = [row for r in results for row in r.rows]
    stages = {stage: counts for r in results for stage, counts in r.card["stages"].items()}
    lengths = [n for r in results for n in r.card["reply_tokens"]["values"]]
    card = build_card(
        name,
        store.key,
        str(store.data_path),
        rows,
        stages,
        lengths,
        sum(r.card["generation"]["new_tokens"] for r in results),
        sum(r.card["generation"]["seconds"] for r in results),
        {"parts": {r.name: str(r.path) for r in results}},
        flops=sum(r.card["generation"].get("flops") or 0.0 for r in results),
    )
    store.finish(rows, card, card_markdown(card))
    return Dataset(name, store.data_path, card)


def generate_dataset(cfg: DictConfig, on_chunk: Callable[[int], None] | None = None) -> Dataset:
    """Run (or reuse from the cache) every stage ``cfg.data`` asks for; ``on_chunk(i)`` fires after each chunk."""
    spec, gen = cfg.data.generate, cfg.generation
    stages = list(spec.stages)
    if not stages:
        raise ValueError(
            f"data.generate.stages is empty for data={cfg.data.name}; list some of: {', '.join(STAGES.names())}."
        )
    builders = [STAGES.get(name) for name in stages]  # unknown names fail before any model loads
    constitution = resolve_persona(cfg.persona.path or cfg.persona.name)
    root = data_cache_root(gen.get("cache_dir"))
    sampler_cfg = generation_sampler(cfg)
    inside(root, str(cfg.data.name), what="data.name")  # a combined dataset's directory: checked before models load
    ctx = StageContext(
        constitution=constitution,
        filters=FilterSettings.from_cfg(gen.filters),
        seed=int(gen.seed),
        chunk_size=int(gen.chunk_size),
        root=root,
        sampler={"name": str(sampler_cfg.name), "batch_size": int(gen.batch_size)},
        on_chunk=on_chunk,
    )
    generator = build_generator(cfg.model, sampler_cfg, gen, role="model")
    loaded: list[Generator] = [generator]

    def teacher() -> Generator:
        if not gen.get("teacher_model"):
            return generator
        loaded.append(build_generator(_teacher_model_cfg(cfg), sampler_cfg, gen, role="teacher"))
        return loaded[-1]

    try:
        results = [run_stage(build(cfg, ctx, generator, teacher)) for build in builders]
    finally:
        for g in loaded:
            g.close()
    if len(results) == 1:
        dataset = Dataset(cfg.data.name, results[0].path, results[0].card)
    else:
        dataset = _combine(str(cfg.data.name), results, ctx)
    dataset.generation = ctx.generation
    return dataset


def empty_dataset_message(dataset: Dataset) -> str:
    dropped = {stage: counts.get("dropped", {}) for stage, counts in dataset.card["stages"].items()}
    return (
        f"data={dataset.name}: every generated item was filtered out ({dropped}; card: "
        f"{dataset.path.parent / 'card.md'}). A model that never ends its turn or sentence (e.g. model=tiny) "
        f"needs generation.filters.unfinished=keep; otherwise raise generation.max_new_tokens."
    )


def prepare_data(cfg: DictConfig) -> Dataset | None:
    """The dataset ``cfg.data`` trains on when the data pipeline makes it (generated now unless cached); None when
    the variant reads ``data.path``, a bundled set or prompt sets. ``cfg`` is left as it is: the dataset's path goes
    to :func:`charlit.data.modules.build_datamodule` as ``dataset_path``."""
    if not needs_generation(cfg.data):
        return None
    dataset = generate_dataset(cfg)
    rows = dataset.card["rows"]
    if rows == 0:
        raise ValueError(empty_dataset_message(dataset))
    print(
        f"[charlit] data={cfg.data.name}: {rows} rows at {dataset.path} (card: {dataset.path.parent / 'card.md'})",
        flush=True,
    )
    return dataset


def source_cfg(cfg: DictConfig, kind: str, hint: str) -> DictConfig:
    """``cfg`` with ``data`` replaced by ``data.source``, for a stage that reads another dataset
    (``data=teacher_cache``, ``data=reference_logps``); the source must be of ``kind``, else a one-line error
    ending with ``hint``."""
    source = cfg.data.get("source")
    if source is None or source.get("kind") != kind:
        found = None if source is None else source.get("kind")
        raise ValueError(f"data={cfg.data.name} reads a {kind} dataset, but data.source has kind {found!r}; {hint}")
    out = OmegaConf.to_container(cfg, resolve=True)
    out["data"] = out["data"]["source"]
    return OmegaConf.create(out)
