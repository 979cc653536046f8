"""Bundled prompt sets: general user prompts for training and a disjoint held-out set for validation."""
from __future__ import annotations

import json
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "prompts"


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON Lines; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {path} does not exist.")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def load_prompt_set(name_or_path: str) -> list[str]:
    """A bundled prompt set by name (``general_train``, ``general_heldout``) or a JSONL file of ``{"prompt": ...}``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in PROMPT_DIR.glob("*.jsonl"))
            raise ValueError(f"Unknown prompt set {name_or_path!r}; bundled sets: {', '.join(known)}, or a path to a .jsonl file.")
    prompts = []
    for i, row in enumerate(read_jsonl(path), 1):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: row {i} has no non-empty 'prompt' string.")
        prompts.append(prompt.strip())
    return prompts


def dedupe(prompts: list[str]) -> list[str]:
    seen, out = set(), []
    for p in prompts:
        key = " ".join(p.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
