"""One training run from a composed config: data → objective → trainer → checkpoint → summary."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from charlit.data.constitution import Constitution, resolve_persona
from charlit.data.datamodule import build_datamodule
from charlit.eval import train_hook
from charlit.loggers import build_logger, plain_config
from charlit.models import load_model
from charlit.objectives import get_objective
from charlit.objectives.base import RunContext
from charlit.sampling import build_sampler


def constitution_from_cfg(cfg: DictConfig) -> Constitution:
    return resolve_persona(cfg.persona.path or cfg.persona.name)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trainer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    every = int(cfg.val.every_n_steps)
    if every > 0:
        kwargs.update(val_check_interval=every, check_val_every_n_epoch=None)
    else:
        kwargs.update(limit_val_batches=0)
    return kwargs


def save_final(objective, out_dir: Path) -> Path:
    """Write a Hugging Face checkpoint (LoRA merged) that ``from_pretrained`` loads as is."""
    model = objective.policy
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        objective.policy = model
    model.save_pretrained(out_dir, safe_serialization=True)
    objective.tokenizer.save_pretrained(out_dir)
    return out_dir


def build_objective(cfg: DictConfig):
    """The objective (LightningModule) and data module a config describes."""
    constitution = constitution_from_cfg(cfg)
    objective_cls = get_objective(str(cfg.method.name))
    loaded = load_model(cfg.model)
    datamodule = build_datamodule(cfg.data, constitution, loaded.tokenizer, objective_cls.accepted_data_kinds(),
                                  seed=int(cfg.seed), method=str(cfg.method.name),
                                  conversation_format=objective_cls.conversation_format)
    sampler = build_sampler(cfg.sampler, loaded.tokenizer)
    objective = objective_cls(RunContext(cfg=cfg, loaded=loaded, constitution=constitution, sampler=sampler))
    return objective, datamodule


def train(cfg: DictConfig, run_dir: Path) -> dict:
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    objective, datamodule = build_objective(cfg)
    constitution = objective.constitution

    config = plain_config(cfg)
    run_name = f"{cfg.method.name}-{cfg.teacher.name}-{cfg.data.name}-{constitution.name}"
    logger = build_logger(cfg.logger, run_dir, config, run_name)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=int(cfg.output.checkpoint_every_n_steps) or None)
    trainer = L.Trainer(logger=logger, callbacks=[checkpoint], default_root_dir=str(run_dir), **_trainer_kwargs(cfg))

    has_val = int(cfg.val.every_n_steps) > 0
    if has_val:
        trainer.validate(objective, datamodule=datamodule, verbose=False)
    trainer.fit(objective, datamodule=datamodule)
    if has_val and (not objective.val_history or objective.val_history[-1]["step"] != trainer.global_step):
        trainer.validate(objective, datamodule=datamodule, verbose=False)

    final_dir = save_final(objective, run_dir / "final") if cfg.output.save_final and trainer.is_global_zero else None
    summary = build_summary(cfg, config, objective, trainer, run_dir, final_dir, time.perf_counter() - start, constitution)
    if train_hook.enabled(cfg) and final_dir is not None:
        summary["metrics"].update(train_hook.evaluate_final(cfg, objective.policy, objective.tokenizer, constitution, run_dir))
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.experiment.summary.update({k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float))})
        print(f"[charlit] run dir: {run_dir}\n[charlit] summary: {run_dir / 'summary.json'}", flush=True)
    if hasattr(logger, "finalize"):
        logger.finalize("success")
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()
    return summary


def build_summary(cfg, config, objective, trainer, run_dir, final_dir, wall, constitution) -> dict:
    metrics = dict(objective.last_train_metrics)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1})
    history = objective.val_history
    if history:
        for key in ("val/divergence", "val/persona_gain", "val/persona_progress"):
            if key in history[0]:
                metrics[f"{key}_start"] = history[0][key]
                metrics[f"{key}_end"] = history[-1][key]
        metrics.update(objective.baselines)
        if "val/divergence_start" in metrics and metrics["val/divergence_start"] > 0:
            metrics["val/divergence_change"] = metrics["val/divergence_end"] / metrics["val/divergence_start"] - 1
    return {
        "method": cfg.method.name,
        "teacher": cfg.teacher.name,
        "data": cfg.data.name,
        "persona": constitution.name,
        "model": cfg.model.name_or_path,
        "steps": int(trainer.global_step),
        "metrics": metrics,
        "val_history": history,
        "wall_time_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "paths": {
            "run_dir": str(run_dir),
            "final": str(final_dir) if final_dir else None,
            "checkpoints": str(run_dir / "checkpoints"),
            "persona": constitution.source,
        },
        "argv": sys.argv[1:],
        "config": config,
    }
