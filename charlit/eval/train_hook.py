"""``eval=quick`` in train.py: the character benchmarks on the final model at the end of a run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from charlit.data.constitution import Constitution
from charlit.eval.runner import Candidate, evaluate, headline
from charlit.eval.writers import write_outputs
from charlit.models import load_model


def enabled(cfg: DictConfig) -> bool:
    return cfg.get("eval") is not None and cfg.eval.get("name", "none") != "none"


def evaluate_final(cfg: DictConfig, policy, tokenizer, constitution: Constitution, run_dir: Path) -> dict[str, float]:
    """Evaluate the trained ``policy`` against the base of ``cfg.model`` (or ``eval.base_model``, which a recipe sets
    for its later stages: the recipe's own starting model); writes ``<run_dir>/eval/``, returns the headline
    numbers (``eval/<suite>/<metric>``)."""
    model_cfg = cfg.model
    if cfg.eval.get("base_model"):
        model_cfg = OmegaConf.merge(cfg.model, {"name_or_path": str(cfg.eval.base_model)})
    base = load_model(model_cfg, tokenizer=tokenizer, apply_lora=False)
    report = evaluate(
        cfg.eval,
        base.model,
        tokenizer,
        constitution,
        under_test=Candidate(policy, str(run_dir / "final")),
        base_name=str(model_cfg.name_or_path),
    )
    write_outputs(report, run_dir / "eval")
    return headline(report)
