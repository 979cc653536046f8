"""One training run from a composed config: data → objective → trainer → checkpoint → summary."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from charlit import progress
from charlit.checkpointing import (
    AtomicCheckpointIO,
    ValHistoryFile,
    checkpoint_step,
    claim,
    find_resume,
    log_rows_again,
    logged_rows,
    mark_run,
    read_summary,
    run_fingerprint,
    write_json,
)
from charlit.data.constitution import Constitution, resolve_persona
from charlit.data.modules import DATA_MODULES, build_datamodule
from charlit.data.modules.base import IGNORED_KEYS
from charlit.data.pipeline import needs_generation, prepare_data
from charlit.data.pipeline.card import log_card_to_wandb
from charlit.data.pipeline.cli import GENERATE_ONLY_KINDS
from charlit.eval import train_hook
from charlit.kernels import cpu_gemm, set_default_backend
from charlit.loggers import build_logger, plain_config
from charlit.models import bundled, load_model, load_tokenizer
from charlit.models.tiny import TINY_ID, tiny_config
from charlit.objectives import OBJECTIVES
from charlit.objectives.base import ObjectiveContext, OptimSettings
from charlit.objectives.validation import ValidationSettings
from charlit.sampling import SamplingParams, build_sampler, sampler_settings
from charlit.settings import parse
from charlit.strategies import build_strategy
from charlit.sweeps.publish import sweep_group
from charlit.teachers import teacher_factory
from charlit.transport import check_key_transport


def constitution_from_cfg(cfg: DictConfig) -> Constitution:
    return resolve_persona(cfg.persona.path or cfg.persona.name)


def hydra_sweep_group() -> str | None:
    """The shared W&B group of a multirun's jobs (None for a single run or outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return sweep_group(HydraConfig.get().sweep.dir)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trainer_kwargs(cfg: DictConfig, model, callbacks: list = ()) -> dict:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    # charlit's console output instead of Lightning's: a `[charlit] training:` line replaces the model summary
    # table (whose FLOPs read 0 without an example_input_array), and one bar / plain lines show the steps
    kwargs.setdefault("enable_model_summary", False)
    kwargs["callbacks"] = [*callbacks, *progress.trainer_callbacks(bool(kwargs.get("enable_progress_bar", True)))]
    kwargs["strategy"] = build_strategy(kwargs, model, bool(cfg.model.get("gradient_checkpointing", False)))
    kwargs.pop("fsdp", None)
    kwargs["use_distributed_sampler"] = False  # charlit's loaders shard global batches themselves (data/loader.py)
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


def context_window(model_cfg: DictConfig) -> int | None:
    """The model's ``max_position_embeddings``, read from its config alone (no weights); None when unknown (a model
    that does not load fails with its own error in ``load_model``)."""
    name = str(model_cfg.name_or_path)
    if name == TINY_ID:
        return tiny_config(1, bos_token_id=None, eos_token_id=None).max_position_embeddings
    from transformers import AutoConfig

    source = bundled.converted_dir(with_weights=True, model_id=name) if name in bundled.BUNDLED else name
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    except (OSError, ValueError):
        return None
    return getattr(config, "max_position_embeddings", None)


def check_context_window(cfg: DictConfig, limit: int | None) -> None:
    """Refuse lengths the model cannot attend over, before any data is read or generated."""
    if not limit:
        return
    for key in ("data.max_length", "sampler.max_new_tokens", "generation.max_new_tokens"):
        value = OmegaConf.select(cfg, key)
        if value is not None and int(value) > int(limit):
            raise ValueError(
                f"{key}={value} is longer than the model's context window ({cfg.model.name_or_path}: "
                f"max_position_embeddings={limit}); set {key}<={limit}."
            )


def check_constitution_fits(cfg: DictConfig, constitution: Constitution, tokenizer, limit: int | None) -> None:
    """The constitution is the teacher's (and validation's) system prompt: it must leave room for a prompt and a
    reply in the context window."""
    if not limit:
        return
    used = len(tokenizer(constitution.system_prompt(), add_special_tokens=False, verbose=False)["input_ids"])
    keys = ["sampler.max_new_tokens"] + (["generation.max_new_tokens"] if needs_generation(cfg.data) else [])
    key = max(keys, key=lambda k: int(OmegaConf.select(cfg, k)))
    reply = int(OmegaConf.select(cfg, key))
    if used + reply >= limit:
        raise ValueError(
            f"The constitution of persona {constitution.name} ({constitution.source}) is {used} tokens as a system "
            f"prompt; with {key}={reply} for the reply that leaves no room for a prompt in the context window of "
            f"{cfg.model.name_or_path} ({limit} tokens). Shorten the constitution, lower {key}, or use a model "
            f"with a longer context."
        )


def check_trainer(cfg: DictConfig) -> None:
    """The Lightning ``trainer`` settings charlit relies on (the rest Lightning checks itself)."""
    steps = cfg.trainer.get("max_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"trainer.max_steps={steps!r} must be a positive integer (optimizer steps to run).")


def check_data(cfg: DictConfig) -> None:
    """The ``data`` settings, parsed the way the data module will parse them. Only a ``Settings`` the kind declares
    itself counts: a subclass that inherits one may parse other keys in its own ``from_config`` (checked then)."""
    if cfg.data.kind in GENERATE_ONLY_KINDS:
        then = {
            "teacher_cache": "`python train.py method=distill teacher=cached teacher.path=<its dir> data=<source>`",
            "reference_logps": "`python train.py method=dpo data=pairs data.path=<the file it prints>`",
        }[cfg.data.kind]
        raise ValueError(
            f"data={cfg.data.name} is built by generate.py, not trained on: `python generate.py "
            f"data={cfg.data.name} ...`, then {then}."
        )
    settings_cls = vars(DATA_MODULES.get(cfg.data.kind)).get("Settings")
    if settings_cls is not None:
        parse(settings_cls, cfg.data, "data", ignore=IGNORED_KEYS)


@dataclass
class RunSettings:
    """Every setting of a run, parsed and checked."""

    objective_cls: type
    config: object
    constitution: Constitution
    sampling: SamplingParams
    make_teacher: Callable
    optim: OptimSettings
    validation: ValidationSettings


def check_llm_judge(cfg: DictConfig) -> None:
    """The end-of-training evaluation's LLM judge may not send its key over plain http (checked before training)."""
    judge = cfg.get("eval", {}).get("llm_judge") or {}
    if judge.get("kind") == "openai" and judge.get("base_url"):
        check_key_transport(judge.base_url, judge.get("api_key_env"), bool(judge.get("allow_insecure_http", False)))


def check_settings(cfg: DictConfig) -> RunSettings:
    """Parse and check every setting, lengths included; nothing is written, generated or loaded (only the
    tokenizer and the model's config are read) before this passes."""
    objective_cls = OBJECTIVES.get(cfg.method.name)
    settings = RunSettings(
        objective_cls=objective_cls,
        config=parse(objective_cls.Config, cfg.method, "method"),
        constitution=constitution_from_cfg(cfg),
        sampling=sampler_settings(cfg.sampler).params(),
        make_teacher=teacher_factory(cfg.teacher),
        optim=parse(OptimSettings, cfg.optim, "optim"),
        validation=ValidationSettings.from_config(cfg.val),
    )
    check_trainer(cfg)
    check_data(cfg)
    check_llm_judge(cfg)
    limit = context_window(cfg.model)
    check_context_window(cfg, limit)
    check_constitution_fits(cfg, settings.constitution, load_tokenizer(cfg.model), limit)
    return settings


def build_objective(cfg: DictConfig, dataset_path: Path | None = None, settings: RunSettings | None = None):
    """The objective (LightningModule) and data module a config describes; every setting is checked before the
    model loads (``settings``: already checked by :func:`check_settings`)."""
    settings = settings or check_settings(cfg)
    objective_cls = settings.objective_cls
    set_default_backend(str(cfg.kernels.backend))
    cpu_gemm.set_setting(str(cfg.kernels.cpu_gemm))
    loaded = load_model(cfg.model)
    datamodule = build_datamodule(
        cfg.data,
        settings.constitution,
        loaded.tokenizer,
        objective_cls.accepted_data_kinds(),
        seed=int(cfg.seed),
        method=str(cfg.method.name),
        conversation_format=objective_cls.conversation_format,
        dataset_path=dataset_path,
    )
    ctx = ObjectiveContext(
        loaded=loaded,
        constitution=settings.constitution,
        sampler=build_sampler(cfg.sampler, loaded.tokenizer),
        sampling=settings.sampling,
        teacher=settings.make_teacher,
        data_kind=str(cfg.data.kind),
        optim=settings.optim,
        validation=settings.validation,
        max_steps=int(cfg.trainer.max_steps),
        seed=int(cfg.seed),
    )
    return objective_cls(settings.config, ctx), datamodule


def reused_summary(resume, run_dir: Path) -> dict:
    """The summary of an identical job that already finished, copied into this job's dir (for sweep reports)."""
    summary = read_summary(resume.run_dir)
    if resume.run_dir.resolve() != run_dir.resolve():
        summary["reused_from"] = str(resume.run_dir)
        write_json(run_dir / "summary.json", summary)
    print(
        f"[charlit] this job already finished in {resume.run_dir}: reusing its results (resume=never retrains)",
        flush=True,
    )
    return summary


def resolve_run_dir(cfg: DictConfig, run_dir: Path, reuse_finished: bool):
    """The run dir to write to and what to resume (None: a fresh run), the dir's lock held unless a finished run
    is reused; see charlit.checkpointing."""
    fingerprint = run_fingerprint(cfg)
    resume = find_resume(cfg.get("resume", "auto"), run_dir, fingerprint, reuse_finished=reuse_finished)
    if resume is not None and resume.checkpoint is None:
        return run_dir, resume, None
    if resume is None:
        lock = claim(run_dir)
    else:
        lock = resume.lock
        if resume.run_dir != run_dir:
            write_json(run_dir / "resumed.json", {"continued_in": str(resume.run_dir)})
            run_dir = resume.run_dir
        print(f"[charlit] resuming {run_dir} from {resume.checkpoint} (resume=never starts fresh)", flush=True)
    mark_run(run_dir, fingerprint)
    return run_dir, resume, lock


def train(cfg: DictConfig, run_dir: Path, reuse_finished: bool | None = None) -> dict:
    """Train one run; ``reuse_finished`` (default: in a Hydra multirun) returns the summary of an identical job
    that already finished in an earlier sweep instead of retraining (see charlit.checkpointing)."""
    start = time.perf_counter()
    progress.setup()
    settings = check_settings(cfg)
    if reuse_finished is None:
        reuse_finished = hydra_sweep_group() is not None
    run_dir, resume, lock = resolve_run_dir(cfg, run_dir, reuse_finished)
    if lock is None:
        return reused_summary(resume, run_dir)
    with lock:
        return _train_in(cfg, run_dir, resume.checkpoint if resume else None, settings, start)


def _train_in(cfg: DictConfig, run_dir: Path, checkpoint_path: Path | None, settings: RunSettings, start: float):
    """Train in ``run_dir`` (its lock held), from ``checkpoint_path`` when resuming."""
    resumed_step = checkpoint_step(checkpoint_path) if checkpoint_path else None
    dataset = prepare_data(cfg)  # generates the data variant's dataset first unless it is cached
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    objective, datamodule = build_objective(cfg, dataset.path if dataset is not None else None, settings)
    if dataset is not None:
        objective.compute.add_data(dataset.generation)
    constitution = objective.constitution

    config = plain_config(cfg)
    run_name = f"{cfg.method.name}-{cfg.teacher.name}-{cfg.data.name}-{constitution.name}"
    tags = [
        f"method:{cfg.method.name}",
        f"teacher:{cfg.teacher.name}",
        f"data:{cfg.data.name}",
        f"persona:{constitution.name}",
    ]
    earlier_rows = logged_rows(run_dir, resumed_step) if resumed_step is not None else []
    logger = build_logger(cfg.logger, run_dir, config, run_name, group=hydra_sweep_group(), tags=tags)
    log_rows_again(logger, earlier_rows)  # the CSV logger starts its file afresh
    if dataset is not None and logger and type(logger).__name__ == "WandbLogger":
        log_card_to_wandb(dataset.card, logger.experiment)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=int(cfg.output.checkpoint_every_n_steps) or None,
    )
    trainer = L.Trainer(
        logger=logger,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **_trainer_kwargs(cfg, objective.policy, callbacks=[checkpoint, ValHistoryFile(run_dir, resumed_step)]),
    )

    has_val = int(cfg.val.every_n_steps) > 0
    if has_val and checkpoint_path is None:  # a resumed run restores its start-of-run validation
        trainer.validate(objective, datamodule=datamodule, verbose=False)
    trainer.fit(objective, datamodule=datamodule, ckpt_path=checkpoint_path)
    if has_val and (not objective.val_history or objective.val_history[-1]["step"] != trainer.global_step):
        trainer.validate(objective, datamodule=datamodule, verbose=False)

    final_dir = save_final(objective, run_dir / "final") if cfg.output.save_final and trainer.is_global_zero else None
    summary = build_summary(
        cfg, config, objective, trainer, run_dir, final_dir, time.perf_counter() - start, constitution
    )
    summary["paths"]["dataset"] = str(dataset.path) if dataset is not None else None  # generated by the data pipeline
    if train_hook.enabled(cfg) and final_dir is not None:
        summary["metrics"].update(
            train_hook.evaluate_final(cfg, objective.policy, objective.tokenizer, constitution, run_dir)
        )
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.experiment.summary.update(
                    {k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
                )
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
        for key in (
            "val/divergence",
            "val/persona_gain",
            "val/persona_progress",
            "val/persona_gain_gated",
            "val/persona_progress_gated",
            "val/looping_frac",
        ):
            if key in history[0]:
                metrics[f"{key}_start"] = history[0][key]
                metrics[f"{key}_end"] = history[-1][key]
            if f"{key}_ci95" in history[-1]:
                metrics[f"{key}_end_ci95"] = history[-1][f"{key}_ci95"]
        metrics.update(objective.baselines)
        if "val/divergence_start" in metrics and metrics["val/divergence_start"] > 0:
            metrics["val/divergence_change"] = metrics["val/divergence_end"] / metrics["val/divergence_start"] - 1
    compute = objective.reported_compute
    metrics.update(compute.totals())
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
        "compute": compute.summary(),
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
