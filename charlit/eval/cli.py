"""``python eval.py``: resolve what to evaluate (run dir, HF dir or base model; persona), run, write, log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from charlit import progress
from charlit.data.constitution import Constitution, bundled_personas, resolve_persona
from charlit.eval.runner import Candidate, evaluate, headline
from charlit.eval.writers import log_to_wandb, personas_table, write_outputs
from charlit.loggers import plain_config, wandb_mode
from charlit.models import load_model

ALL_PERSONAS = "all"


def register_eval_configs() -> None:
    """``persona=all`` evaluates every bundled persona (the bare base's replies are sampled once)."""
    ConfigStore.instance().store(group="persona", name=ALL_PERSONAS, node={"name": ALL_PERSONAS, "path": None})


@dataclass
class Checkpoint:
    model_dir: Path
    summary: dict | None  # the run's summary.json when ckpt is a run dir


def resolve_checkpoint(path: str, what: str = "ckpt") -> Checkpoint:
    """A run dir (``final/`` + ``summary.json``) or a Hugging Face directory (``config.json``)."""
    root = Path(path).expanduser()
    if (root / "final" / "config.json").is_file():
        summary_path = root / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        return Checkpoint(root / "final", summary)
    if (root / "config.json").is_file():
        return Checkpoint(root, None)
    raise ValueError(
        f"{what}={path!r} is neither a run dir (with final/config.json) nor a Hugging Face directory "
        f"(with config.json); pass the directory `python train.py` printed as its run dir."
    )


def base_model_cfg(cfg: DictConfig, ckpt: Checkpoint | None) -> DictConfig:
    """The base model: the one the run trained from (its summary.json) when known, else ``model``.

    A run dir is someone else's file: nothing read from it may turn on remote code. ``trust_remote_code`` is always
    this invocation's own ``model.trust_remote_code``, and the model path taken from the run dir is printed."""
    if ckpt and ckpt.summary and ckpt.summary.get("config", {}).get("model"):
        model = OmegaConf.create(ckpt.summary["config"]["model"])
        model.trust_remote_code = bool(cfg.model.get("trust_remote_code", False))
        print(
            f"[charlit] base model from {ckpt.model_dir.parent / 'summary.json'}: {model.get('name_or_path')}",
            flush=True,
        )
        return model
    return cfg.model


def personas(cfg: DictConfig, ckpt: Checkpoint | None) -> list[Constitution]:
    chosen = cfg.get("persona")
    if chosen is None and ckpt and ckpt.summary:
        chosen = ckpt.summary.get("config", {}).get("persona")
    if not chosen:
        raise ValueError(
            f"No persona given: add persona=<name> (bundled: {', '.join(bundled_personas())}, or `all`) "
            f"or persona=path/to/constitution.yaml."
        )
    if chosen.get("name") == ALL_PERSONAS and not chosen.get("path"):
        return [resolve_persona(name) for name in bundled_personas()]
    return [resolve_persona(chosen.get("path") or chosen["name"])]


def _candidate(path: str | None, what: str, tokenizer) -> Candidate | None:
    if not path:
        return None
    ckpt = resolve_checkpoint(str(path), what)
    loaded = load_model(OmegaConf.create({"name_or_path": str(ckpt.model_dir)}), tokenizer=tokenizer, apply_lora=False)
    loaded.model.requires_grad_(False)  # evaluation only: no parameter needs a gradient
    if loaded.model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ValueError(
            f"{what}={path!r} has a smaller vocabulary than the base model's tokenizer; "
            f"evaluate it with the base model it was trained from (model=...)."
        )
    return Candidate(loaded.model, str(ckpt.model_dir))


def _start_wandb(cfg: DictConfig, out_dir: Path, name: str):
    if cfg.logger.name != "wandb":
        return None
    import wandb

    mode = wandb_mode(str(cfg.logger.get("mode", "auto")))
    run = wandb.init(
        project=cfg.logger.project,
        name=name,
        group=cfg.logger.get("group"),
        job_type="eval",
        tags=list(cfg.logger.get("tags") or []),
        dir=str(out_dir),
        mode=mode,
        config=plain_config(cfg),
    )
    if mode == "offline":
        print(
            f"[charlit] W&B offline (no API key configured): sync later with `wandb sync {Path(run.dir).parent}`",
            flush=True,
        )
    return run


def run_eval(cfg: DictConfig, out_dir: Path) -> list[dict]:
    progress.setup()
    ckpt = resolve_checkpoint(str(cfg.ckpt)) if cfg.ckpt else None
    constitutions = personas(cfg, ckpt)
    base = load_model(base_model_cfg(cfg, ckpt), apply_lora=False)
    base.model.requires_grad_(False)
    under_test = _candidate(cfg.ckpt, "ckpt", base.tokenizer)
    compare = _candidate(cfg.compare, "compare", base.tokenizer)
    reports, tables = [], []
    for constitution in constitutions:
        persona_dir = out_dir / constitution.name if len(constitutions) > 1 else out_dir
        report = evaluate(
            cfg,
            base.model,
            base.tokenizer,
            constitution,
            under_test=under_test,
            compare=compare,
            base_name=str(base.name_or_path),
        )
        plots = write_outputs(report, persona_dir)
        numbers = headline(report)
        run = _start_wandb(
            cfg, persona_dir, f"eval-{Path(str(cfg.ckpt or base.name_or_path)).name}-{constitution.name}"
        )
        if run is not None:
            log_to_wandb(run, report, numbers, plots)
            run.finish()
        tables.append((persona_dir / "eval.md").read_text())
        print(f"[charlit] {constitution.name}: {persona_dir / 'eval.json'} ({report['wall_time_s']:.0f} s)", flush=True)
        reports.append(report)
    if len(constitutions) > 1:
        (out_dir / "eval.md").write_text("\n".join(tables))
        (out_dir / "personas.md").write_text(personas_table(reports))
    print(tables[-1] if len(tables) == 1 else f"[charlit] all personas: {out_dir / 'eval.md'}", flush=True)
    return reports
