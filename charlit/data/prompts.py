"""Bundled prompt sets: general user prompts for training and a disjoint held-out set for validation."""

from __future__ import annotations

from pathlib import Path

from charlit.data.constitution import Constitution
from charlit.data.io import read_jsonl

PROMPT_DIR = Path(__file__).parent / "prompts"


def load_prompt_set(name_or_path: str) -> list[str]:
    """A bundled prompt set by name (``general_train``, ``general_heldout``) or a JSONL file of ``{"prompt": ...}``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in PROMPT_DIR.glob("*.jsonl"))
            raise ValueError(
                f"Unknown prompt set {name_or_path!r}; bundled sets: {', '.join(known)}, or a path to a .jsonl file."
            )
    prompts = []
    for i, row in enumerate(read_jsonl(path), 1):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: row {i} has no non-empty 'prompt' string.")
        prompts.append(prompt.strip())
    return prompts


def prompt_key(prompt: str) -> str:
    """The form prompts are compared in: lower case, whitespace collapsed."""
    return " ".join(prompt.lower().split())


def dedupe(prompts: list[str]) -> list[str]:
    seen, out = set(), []
    for p in prompts:
        key = prompt_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def training_prompts(sets, constitution: Constitution) -> list[str]:
    """Union of prompt sets; the special set ``constitution`` is the persona's own example questions."""
    prompts: list[str] = []
    for name in sets:
        prompts += constitution.questions if name == "constitution" else load_prompt_set(name)
    return dedupe(prompts)


def heldout_prompts(heldout_set: str, size: int, exclude: list[str]) -> list[str]:
    """The first ``size`` prompts of ``heldout_set`` that are not also in ``exclude`` (the training prompts)."""
    seen = {prompt_key(p) for p in exclude}
    return [p for p in load_prompt_set(heldout_set) if prompt_key(p) not in seen][:size]
