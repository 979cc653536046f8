"""Experiment loggers from the ``logger`` config group: W&B (offline when no API key), CSV, or none.

Secrets never reach a logger: config values under keys that look like credentials are redacted before
anything is logged or written (see :func:`redact`).
"""

from __future__ import annotations

import json
import netrc
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
LOGGERS = ("wandb", "csv", "none")


def redact(value):
    """A copy of a plain (nested dict/list) config with credential-like keys replaced by '<redacted>'."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def plain_config(cfg: DictConfig) -> dict:
    return redact(OmegaConf.to_container(cfg, resolve=True))


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    """``auto`` means online with an API key, offline otherwise; WANDB_MODE wins when set."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested == "auto":
        return "online" if wandb_has_api_key() else "offline"
    if requested not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode={requested!r} is not valid; choose auto, online, offline or disabled.")
    return requested


def build_logger(
    cfg: DictConfig, run_dir: Path, config: dict, run_name: str, group: str | None = None, tags: list[str] | None = None
):
    """The configured logger; ``group``/``tags`` (a sweep's shared group, method/teacher/... tags) apply to W&B,
    where ``logger.group`` and ``logger.tags`` from the config take precedence / are added."""
    name = cfg.name
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        # flushed every step so a killed run keeps its metrics up to the kill
        logger = CSVLogger(save_dir=str(run_dir), name="csv", version="", flush_logs_every_n_steps=1)
        logger.log_hyperparams(config)
        return logger
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(str(cfg.get("mode", "auto")))
        id_file = run_dir / "wandb_run_id"  # a resumed run (charlit.checkpointing) continues its W&B run
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        import wandb

        # quiet: no W&B banner or end-of-run history/summary tables (summary.json has the metrics). Offline, W&B
        # prints nothing (silent: its messages go to the run's wandb/.../logs): its header repeats charlit's own
        # line below, which says where the run is and how to sync it. Online, W&B's run URL and warnings print.
        logger = WandbLogger(
            project=cfg.project,
            name=run_name,
            group=cfg.get("group") or group,
            tags=[*(tags or []), *list(cfg.get("tags") or [])],
            id=run_id,
            resume="allow" if run_id else None,
            save_dir=str(run_dir),
            mode=mode,
            config=config,
            job_type=cfg.get("job_type"),
            settings=wandb.Settings(quiet=True, silent=mode == "offline"),
        )
        # Lightning always passes `anonymous=None`, a setting W&B ignores and warns about ("The anonymous setting
        # has no effect"); charlit never asks for anonymous logging, so the argument is dropped before init
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        run = logger.experiment  # start now so the run dir is known
        id_file.write_text(run.id)
        if mode == "offline":
            offline_dir = Path(run.dir).parent
            print(
                f"[charlit] W&B offline (no API key configured): run saved in {offline_dir}; "
                f"sync later with `wandb sync {offline_dir}`",
                flush=True,
            )
        return logger
    raise ValueError(f"logger={name!r} is not available; valid choices: {', '.join(LOGGERS)}.")


def log_samples(trainer, samples: list[dict], step: int, limit: int = 8) -> None:
    """Append sample generations to ``samples.jsonl`` in the run dir and to a W&B table when W&B is on."""
    if trainer is None or not samples or not trainer.is_global_zero:
        return
    samples = samples[:limit]
    run_dir = Path(trainer.default_root_dir)
    with open(run_dir / "samples.jsonl", "a") as fh:
        for s in samples:
            fh.write(json.dumps({"step": step, **s}) + "\n")
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            columns = ["step", "prompt", "student", "teacher"]
            logger.log_table(
                key="samples", columns=columns, data=[[step, s["prompt"], s["student"], s["teacher"]] for s in samples]
            )
