"""What ``generate.py`` does: make the dataset a data variant describes, report it, log its card."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from charlit import progress
from charlit.data.pipeline.card import log_card_to_wandb
from charlit.data.pipeline.dataset import empty_dataset_message, generate_dataset, needs_generation
from charlit.loggers import build_logger, plain_config

GENERATE_ONLY_KINDS = ("teacher_cache", "reference_logps")
"""``data`` kinds that generate.py builds and no objective trains on directly: a top-k teacher cache for
``teacher=cached``, preference pairs with DPO reference log-probs for ``data=pairs data.path=<file>``."""


def _build_generate_only(cfg: DictConfig) -> Path:
    if cfg.data.kind == "teacher_cache":
        from charlit.data.pipeline.teacher_cache import build_teacher_cache

        out = build_teacher_cache(cfg)
        card = out / "card.md"
    else:
        from charlit.data.pipeline.reference_logps import build_reference_logps

        out = build_reference_logps(cfg)
        card = out.parent / "card.md"
    print(f"[charlit] card: {card}")
    print(out, flush=True)
    return out


def generate(cfg: DictConfig, run_dir: Path) -> Path:
    progress.setup()
    if cfg.data.get("kind") in GENERATE_ONLY_KINDS:
        return _build_generate_only(cfg)
    if not needs_generation(cfg.data):
        reason = f"data.path={cfg.data.path} is given" if cfg.data.get("path") else "it has no data.generate block"
        raise ValueError(
            f"data={cfg.data.name} is not generated ({reason}); pick a generated variant "
            f"(pairs, reflection, interaction, introspection) and leave data.path null."
        )
    dataset = generate_dataset(cfg)
    card = dataset.card
    for stage, counts in card["stages"].items():
        dropped = counts["dropped"] or "none"
        print(f"[charlit] {stage}: generated {counts['generated']}, kept {counts['kept']}, dropped {dropped}")
    if card["generation"]["tokens_per_s"]:
        print(
            f"[charlit] generation: {card['generation']['new_tokens']} tokens in {card['generation']['seconds']:.1f} s "
            f"({card['generation']['tokens_per_s']} tokens/s)"
        )
    if card["rows"] == 0:
        print(f"[charlit] warning: {empty_dataset_message(dataset)}")
    logger = build_logger(cfg.logger, run_dir, plain_config(cfg), f"generate-{cfg.data.name}-{cfg.persona.name}")
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        log_card_to_wandb(card, logger.experiment)
        wandb.finish()
    print(f"[charlit] card: {dataset.path.parent / 'card.md'}")
    print(dataset.path, flush=True)
    return dataset.path
