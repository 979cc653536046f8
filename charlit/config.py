"""Hydra glue: config-store entries for the bundled personas and argv rewriting for persona paths."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore

from charlit.data.constitution import bundled_personas

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PERSONA_FILE_OPTION = "file"


def register_configs() -> None:
    """Make every bundled constitution a ``persona`` option, plus ``persona=file persona.path=...``."""
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
