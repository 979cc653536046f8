"""Experiment loggers from the ``logger`` config group: W&B (offline when no API key), CSV, or none.

Secrets never reach a logger: config values under credential keys, and secret-shaped values (API keys, bearer
tokens, a URL's ``user:password@``), are redacted before anything is logged or written (see :func:`redact`).
"""

from __future__ import annotations

import json
import netrc
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

LOGGERS = ("wandb", "csv", "none")
REDACTED = "<redacted>"
# a key is a credential when its last word is one of these (hf_token, client_secret, apiKey); key names are
# matched word by word so that max_new_tokens, tokenizer or api_key_env (an env var's name) stay visible
_SECRET_WORDS = {"token", "password", "passwd", "secret", "apikey", "authorization", "credential", "credentials"}
_SECRET_PAIRS = {("api", "key"), ("secret", "key"), ("access", "key"), ("private", "key")}
_SPECIAL_TOKENS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask"}  # pad_token etc. are tokenizer strings
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
# credential shapes: OpenAI-style sk-... and Hugging Face hf_... keys, GitHub and AWS tokens, a bearer header;
# each needs a long run with a digit, so that names like sk-learn-experiments or hf_tiny_model do not match
_SECRET_VALUE = re.compile(
    r"\b(?=[\w-]*\d)(sk-[\w-]{32,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,}|AKIA[0-9A-Z]{16})"
    r"|\b(?i:bearer)\s+[\w.~+/=-]{16,}"
)


def _key_words(key: str) -> list[str]:
    """``hfToken`` / ``hf-token`` / ``HF_TOKEN`` → ``["hf", "token"]``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower().replace("-", "_").split("_")


def is_secret_key(key) -> bool:
    """Does a config key name a credential (``api_key``, ``hf_token``, ``password``), not e.g. ``max_tokens``?"""
    words = [w for w in _key_words(str(key)) if w]
    if not words:
        return False
    if words[-1] in _SECRET_WORDS:
        return not (len(words) == 2 and words[0] in _SPECIAL_TOKENS)
    return tuple(words[-2:]) in _SECRET_PAIRS


def has_secret_value(text: str) -> bool:
    """Does a string hold something credential-shaped: an sk-/hf_/ghp_ key, a bearer token, a URL's user-info?"""
    return bool(_URL_USERINFO.search(text) or _SECRET_VALUE.search(text))


def redact_text(text: str) -> str:
    """``text`` with URL user-info and credential-shaped substrings replaced by '<redacted>'."""
    return _SECRET_VALUE.sub(REDACTED, _URL_USERINFO.sub(rf"\1{REDACTED}@", text))


def redact(value):
    """A copy of a plain (nested dict/list) config with credential keys' values and credential-shaped strings
    replaced by '<redacted>'."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
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
