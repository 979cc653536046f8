"""Reply filters (empty, too short or long, cut off, format-breaking, duplicate) and near-duplicate detection.

Every dropped item is counted under the first reason that applies, in the order of :data:`REASONS`, so
the dataset card adds up: generated = kept + sum of the drop counts.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from charlit.data.pipeline.generator import Reply

REASONS = ("empty", "unfinished", "format_break", "too_short", "too_long", "duplicate")


@dataclass(frozen=True)
class FilterSettings:
    min_tokens: int = 4
    max_tokens: int = 1024
    drop_unfinished: bool = True
    drop_format_breaks: bool = True
    drop_duplicates: bool = True

    @staticmethod
    def from_cfg(cfg) -> "FilterSettings":
        values = dict(cfg)
        unknown = sorted(set(values) - set(FilterSettings.__dataclass_fields__))
        if unknown:
            raise ValueError(f"generation.filters has unknown keys {unknown}; valid: "
                             f"{', '.join(FilterSettings.__dataclass_fields__)}.")
        settings = FilterSettings(**{k: type(getattr(FilterSettings, k))(v) for k, v in values.items()})
        if settings.min_tokens > settings.max_tokens:
            raise ValueError(f"generation.filters.min_tokens={settings.min_tokens} is above "
                             f"max_tokens={settings.max_tokens}; lower min_tokens or raise max_tokens.")
        return settings


def reply_problem(reply: Reply, settings: FilterSettings) -> str | None:
    """The first reason to drop ``reply`` (one of :data:`REASONS` except ``duplicate``), or None to keep it."""
    if not reply.text:
        return "empty"
    if settings.drop_unfinished and not reply.finished:
        return "unfinished"
    if settings.drop_format_breaks and reply.format_break:
        return "format_break"
    if reply.n_tokens < settings.min_tokens:
        return "too_short"
    if reply.n_tokens > settings.max_tokens:
        return "too_long"
    return None


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form duplicates are compared in."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def char_ngrams(text: str, n: int = 3) -> set[str]:
    text = normalise(text)
    if len(text) <= n:
        return {text} if text else set()
    return {text[i: i + n] for i in range(len(text) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_of(text: str, existing: list[set[str]], threshold: float, n: int = 3) -> int | None:
    """Index of the first entry of ``existing`` (character n-gram sets) whose Jaccard similarity with ``text``
    reaches ``threshold``, or None."""
    grams = char_ngrams(text, n)
    for i, other in enumerate(existing):
        if jaccard(grams, other) >= threshold:
            return i
    return None


class DropCounter:
    """Counts kept items and drops per reason for the dataset card."""

    def __init__(self):
        self.generated = 0
        self.kept = 0
        self.dropped: Counter = Counter()

    def keep(self) -> None:
        self.generated += 1
        self.kept += 1

    def drop(self, reason: str) -> None:
        self.generated += 1
        self.dropped[reason] += 1

    def as_dict(self) -> dict:
        return {"generated": self.generated, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}
