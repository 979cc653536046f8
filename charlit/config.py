"""Hydra glue: config-store entries for the bundled personas, and what the entry points do to argv before Hydra
sees it (refuse secrets, rewrite persona paths)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from charlit.data.constitution import bundled_personas
from charlit.loggers import has_secret_value, is_secret_key

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PERSONA_FILE_OPTION = "file"
# where a credential goes instead of argv: the first entry with a word of the override's key names its variable
_CREDENTIAL_ENV = (
    ({"wandb", "logger"}, "W&B reads WANDB_API_KEY"),
    ({"hf", "hub", "huggingface"}, "the Hugging Face Hub reads HF_TOKEN"),
)
_ANY_CREDENTIAL_ENV = (
    "OPENAI_API_KEY (or the variable named by eval.llm_judge.api_key_env) for the LLM judge, "
    "WANDB_API_KEY for W&B, HF_TOKEN for the Hugging Face Hub"
)
_DICT_KEY = re.compile(r"[{,]\s*([A-Za-z_][\w-]*)\s*:")  # keys inside a dict value: +x={api_key: ...}


JOB_DIRNAME_CHARS = 120  # a sweep job's directory name stays well under the 255 bytes a file system allows


def job_dirname(overrides: str) -> str:
    """A sweep job's directory name from its overrides (``hydra.job.override_dirname``): kept as it is up to
    ``JOB_DIRNAME_CHARS``, else cut there and suffixed with a digest of the whole, so a long command line never
    makes a name the file system refuses and two jobs never share one."""
    if len(overrides) <= JOB_DIRNAME_CHARS:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{overrides[: JOB_DIRNAME_CHARS - 11]}-{digest}"


def register_configs() -> None:
    """Make every bundled constitution a ``persona`` option, plus ``persona=file persona.path=...``; register the
    ``charlit_job_dirname`` resolver the sweep directory names use."""
    OmegaConf.register_new_resolver("charlit_job_dirname", job_dirname, replace=True)
    cs = ConfigStore.instance()
    for name in bundled_personas():
        cs.store(group="persona", name=name, node={"name": name, "path": None})
    cs.store(group="persona", name=PERSONA_FILE_OPTION, node={"name": None, "path": "???"})


def rewrite_persona_path(argv: list[str]) -> list[str]:
    """``persona=some/file.yaml`` → ``persona=file persona.path=/abs/some/file.yaml`` (single values only)."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "persona" and "," not in value and Path(value).suffix in (".yaml", ".yml", ".json"):
            out += [f"persona={PERSONA_FILE_OPTION}", f"persona.path={Path(value).expanduser().resolve()}"]
        else:
            out.append(arg)
    return out


def _override_key(arg: str) -> str:
    """``+a.b@pkg=value`` → ``a.b``; "" for a flag or a bare word."""
    key, sep, _ = arg.partition("=")
    return key.lstrip("+~").split("@")[0] if sep and not arg.startswith("-") else ""


def _credential_env(key: str) -> str:
    """Where the credential given as override ``key`` goes instead (the judge's setting named as in ``key``)."""
    key = key.lower()
    words = {*key.split("."), *re.split(r"[._-]", key)}
    if "llm_judge" in words:
        judge = key[: key.index("llm_judge")] + "llm_judge"
        return f"the LLM judge reads its key from the variable named by {judge}.api_key_env (default OPENAI_API_KEY)"
    return next((hint for names, hint in _CREDENTIAL_ENV if names & words), _ANY_CREDENTIAL_ENV)


def _credential_in(arg: str, key: str) -> str | None:
    """How to name the credential in ``arg`` without repeating it; None when there is none."""
    value = arg.partition("=")[2]
    if key and any(is_secret_key(k) for k in (*key.split("."), *_DICT_KEY.findall(value))):
        return f"{key}=... names a credential and"
    if has_secret_value(arg):
        shape = "a credential (an API key, a token or a URL's user:password@)"
        return f"{key}=... holds {shape} and" if key else f"an argument holds {shape} and"
    return None


def refuse_secrets(argv: list[str]) -> None:
    """Refuse credentials on the command line: Hydra and charlit record argv in plain text (.hydra/,
    summary.json["argv"], W&B, a sweep's job directory names), so a secret-named key (``+eval.llm_judge.api_key=``)
    or a credential-shaped value (``sk-...``, ``hf_...``, ``Bearer ...``, ``https://user:key@host``) is a
    ValueError that names the key, never the value, and the environment variable to use instead."""
    for arg in argv:
        key = _override_key(arg)
        if what := _credential_in(arg, key):
            raise ValueError(
                f"{what} is refused on the command line, where it would be written in plain text (.hydra/, "
                f"summary.json, W&B, sweep directory names); pass it by environment variable instead: "
                f"{_credential_env(key)}."
            )


def refuse_path_names(argv: list[str]) -> None:
    """``data.name`` becomes part of run-dir and cache paths (Hydra creates ``outputs/generate/<data.name>/...``
    before any charlit code runs), so on the command line it must be a slug like a persona's name."""
    from charlit.data.constitution import NAME_PATTERN

    for arg in argv:
        if _override_key(arg) == "data.name":
            for value in arg.partition("=")[2].split(","):
                if not NAME_PATTERN.fullmatch(value):
                    raise ValueError(
                        f"data.name={value!r} is not allowed: it becomes part of output and cache paths; use 1-64 "
                        f"lowercase letters, digits, '_' or '-', starting with a letter or digit."
                    )


def cli_argv(argv: list[str]) -> list[str]:
    """What every entry point does to its arguments before Hydra sees (and records) them."""
    refuse_secrets(argv)
    refuse_path_names(argv)
    return rewrite_persona_path(argv)
