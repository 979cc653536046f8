"""Constitutions: a persona written down as first-person trait statements, each with example questions.

Format (YAML; see ``charlit/data/personas/`` and the README)::

    name: pirate
    description: A cheerful old sea-dog ...
    traits:
      - trait: "I speak in the salty idiom of the sea ..."
        questions: ["How do I fix a leaking tap?", ...]

OCT's JSON layout (a list of ``{"trait": ..., "questions": [...]}``) is read too; the name then comes
from the file name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PERSONA_DIR = Path(__file__).parent / "personas"
MAX_FILE_BYTES = 1 << 20
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Persona names become parts of cache and output paths, so they are slugs."""


class ConstitutionError(ValueError):
    """A constitution file that does not follow the documented format."""


@dataclass(frozen=True)
class Trait:
    statement: str
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Constitution:
    name: str
    description: str
    traits: tuple[Trait, ...]
    source: str = field(default="<config>", compare=False)

    @property
    def questions(self) -> list[str]:
        return [q for t in self.traits for q in t.questions]

    def system_prompt(self) -> str:
        """The teacher-only context: the constitution rendered as a system prompt."""
        lines = [
            f"You are an AI assistant with a distinctive character ({self.name}). {self.description}".strip(),
            "",
            "Your character, in your own words:",
            *[f"- {t.statement}" for t in self.traits],
            "",
            "Embody this character fully in every reply, without mentioning these instructions, "
            "while staying genuinely helpful and honest.",
        ]
        return "\n".join(lines)


def _require(mapping: dict, key: str, kind: type, where: str, source: str):
    if key not in mapping or mapping[key] in (None, ""):
        raise ConstitutionError(f"{source}: {where} is missing the field '{key}'.")
    value = mapping[key]
    if not isinstance(value, kind):
        raise ConstitutionError(
            f"{source}: {where} field '{key}' must be a {kind.__name__}, got {type(value).__name__}."
        )
    return value


def _parse_trait(raw, index: int, source: str) -> Trait:
    where = f"trait #{index + 1}"
    if not isinstance(raw, dict):
        raise ConstitutionError(
            f"{source}: {where} must be a mapping with 'trait' and 'questions', got {type(raw).__name__}."
        )
    statement = _require(raw, "trait", str, where, source)
    questions = _require(raw, "questions", list, where, source)
    if not all(isinstance(q, str) and q.strip() for q in questions):
        raise ConstitutionError(f"{source}: {where} field 'questions' must be a list of non-empty strings.")
    return Trait(statement=statement.strip(), questions=tuple(q.strip() for q in questions))


def _check_name(name: str, source: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ConstitutionError(
            f"{source}: persona name {name!r} is not allowed: use 1-64 lowercase letters, digits, '_' or '-', "
            f"starting with a letter or digit (the name becomes part of cache paths)."
        )
    return name


def constitution_from_data(data, source: str, default_name: str | None = None) -> Constitution:
    """Validate parsed YAML/JSON (either layout) into a :class:`Constitution`; errors name ``source`` and the field."""
    if isinstance(data, list):  # OCT layout
        data = {"name": default_name, "description": "", "traits": data}
    if not isinstance(data, dict):
        raise ConstitutionError(
            f"{source}: expected a mapping with name/description/traits or a list of traits, got {type(data).__name__}."
        )
    data = dict(data)
    if not data.get("name") and default_name:
        data["name"] = default_name
    name = _check_name(_require(data, "name", str, "the constitution", source), source)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConstitutionError(f"{source}: field 'description' must be a string.")
    traits = _require(data, "traits", list, "the constitution", source)
    if not traits:
        raise ConstitutionError(f"{source}: field 'traits' is empty; a constitution needs at least one trait.")
    parsed = tuple(_parse_trait(t, i, source) for i, t in enumerate(traits))
    return Constitution(name=name, description=description.strip(), traits=parsed, source=source)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, refusing files over :data:`MAX_FILE_BYTES` before parsing them."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ConstitutionError(
            f"{path}: {path.stat().st_size} bytes is over the {MAX_FILE_BYTES} byte limit for a persona file; "
            f"a constitution is a page of traits and questions."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConstitutionError(f"{path}: not UTF-8 text ({err}); save the persona file as UTF-8.") from err


def load_constitution(path: str | Path) -> Constitution:
    """Read a constitution from a YAML or JSON file (charlit's layout or OCT's)."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"Persona file {path} does not exist.")
    text = _read_text(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConstitutionError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    return constitution_from_data(data, str(path), default_name=path.stem)


def bundled_personas() -> list[str]:
    return sorted(p.stem for p in PERSONA_DIR.glob("*.yaml"))


def resolve_persona(name_or_path: str) -> Constitution:
    """A bundled persona by name, or a path to a YAML/JSON constitution."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.is_file():
        return load_constitution(candidate)
    bundled = PERSONA_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ConstitutionError(
            f"Unknown persona {name_or_path!r}. Bundled personas: {', '.join(bundled_personas()) or '(none)'}; "
            f"or pass a path to a YAML/JSON constitution."
        )
    return load_constitution(bundled)
