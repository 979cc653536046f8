"""Reply filters (empty, format-breaking, looping, cut off, too short or long, duplicate), best-of-k sampling
against them, and near-duplicate detection.

Every dropped item is counted under the first reason that applies, in the order of :data:`REASONS`, so
the dataset card adds up: generated = kept + sum of the drop counts.

A reply cut off at ``max_new_tokens`` (no end-of-turn token) is handled by ``filters.unfinished``: ``drop``
it (OCT's rule), ``trim`` it back to its last complete sentence (dropped when none is left; counted as
``trimmed``), or ``keep`` it as it is.

A reply that loops under the evaluation's coherence gate (``charlit.quality``: a 4-token sequence 3 times within
64 tokens, on the token ids as sampled) is handled by ``filters.loops``: ``cut`` it before the loop completes,
back to its last complete sentence (dropped when none is left; counted as ``cut_at_loop``), ``drop`` it, or
``keep`` it. With ``best_of: k`` a generator samples up to ``k`` replies per request and keeps the first that
passes every filter (the first one otherwise), so fewer requests are lost to the filters.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

from charlit.data.pipeline.generator import Generator, Reply

REASONS = ("empty", "format_break", "looping", "unfinished", "too_short", "too_long", "repetitive", "duplicate")
_SENTENCE = re.compile(r"[^.!?…\n]+[.!?…]*")
UNFINISHED = ("drop", "trim", "keep")
LOOPS = ("cut", "drop", "keep")


@dataclass(frozen=True)
class FilterSettings:
    min_tokens: int = 4
    max_tokens: int = 1024
    unfinished: str = "trim"
    drop_format_breaks: bool = True
    drop_duplicates: bool = True
    max_repeats: int = 0  # > 0: drop a reply in which one sentence occurs this many times (degenerate loops)
    loops: str = "cut"
    best_of: int = 1

    @staticmethod
    def from_cfg(cfg) -> FilterSettings:
        values = dict(cfg)
        unknown = sorted(set(values) - set(FilterSettings.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"generation.filters has unknown keys {unknown}; valid: "
                f"{', '.join(FilterSettings.__dataclass_fields__)}."
            )
        settings = FilterSettings(**{k: type(getattr(FilterSettings, k))(v) for k, v in values.items()})
        if settings.unfinished not in UNFINISHED:
            raise ValueError(
                f"generation.filters.unfinished={settings.unfinished!r}; choose one of {', '.join(UNFINISHED)}."
            )
        if settings.loops not in LOOPS:
            raise ValueError(f"generation.filters.loops={settings.loops!r}; choose one of {', '.join(LOOPS)}.")
        if settings.best_of < 1:
            raise ValueError(f"generation.filters.best_of={settings.best_of}; use 1 (no resampling) or more.")
        if settings.min_tokens > settings.max_tokens:
            raise ValueError(
                f"generation.filters.min_tokens={settings.min_tokens} is above "
                f"max_tokens={settings.max_tokens}; lower min_tokens or raise max_tokens."
            )
        return settings


def screen(reply: Reply, settings: FilterSettings) -> tuple[Reply | None, str | None]:
    """``(reply to keep, None)`` — trimmed when it was cut off and ``unfinished=trim`` — or ``(None, reason)``
    with the first reason of :data:`REASONS` (except ``duplicate``) that applies."""
    if not reply.text:
        return None, "empty"
    if settings.drop_format_breaks and reply.format_break:
        return None, "format_break"
    if reply.loops and settings.loops != "keep":
        if settings.loops == "drop" or not reply.unlooped_text:
            return None, "looping"
        return screen_cut(reply, settings)
    if not reply.finished and settings.unfinished != "keep":
        if settings.unfinished == "drop" or not reply.trimmed_text:
            return None, "unfinished"
        reply = replace(reply, text=reply.trimmed_text, n_tokens=reply.trimmed_tokens, was_trimmed=True)
    if reply.n_tokens < settings.min_tokens:
        return None, "too_short"
    if reply.n_tokens > settings.max_tokens:
        return None, "too_long"
    if settings.max_repeats > 0 and most_repeated_sentence(reply.text) >= settings.max_repeats:
        return None, "repetitive"
    return reply, None


def screen_cut(reply: Reply, settings: FilterSettings) -> tuple[Reply | None, str | None]:
    """The length checks on a looping reply cut before its loop (it then ends like a finished reply)."""
    cut = replace(reply, text=reply.unlooped_text, n_tokens=reply.unlooped_tokens, finished=True, was_cut=True)
    if cut.n_tokens < settings.min_tokens:
        return None, "too_short"
    if cut.n_tokens > settings.max_tokens:
        return None, "too_long"
    return cut, None


def best_replies(
    generator: Generator, conversations: list[list[dict]], seed: int, desc: str, settings: FilterSettings
) -> list[Reply]:
    """One reply per conversation: with ``best_of = k > 1``, the first of ``k`` samples (drawn in one batch) that
    passes :func:`screen`, or the first sample when none does."""
    k = settings.best_of
    if k == 1:
        return generator.reply(conversations, seed=seed, desc=desc)
    samples = generator.reply([c for c in conversations for _ in range(k)], seed=seed, desc=f"{desc} (best of {k})")
    chosen = []
    for i in range(len(conversations)):
        candidates = samples[i * k : (i + 1) * k]
        chosen.append(next((r for r in candidates if screen(r, settings)[1] is None), candidates[0]))
    return chosen


def most_repeated_sentence(text: str) -> int:
    """How often the most frequent sentence (or line) of ``text`` occurs, compared in normalised form."""
    counts = Counter(normalise(s) for s in _SENTENCE.findall(text))
    counts.pop("", None)
    return max(counts.values(), default=0)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form duplicates are compared in."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def char_ngrams(text: str, n: int = 3) -> set[str]:
    text = normalise(text)
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


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
    """Counts kept items (and how many of them were trimmed or cut at a loop) and drops per reason, for the
    dataset card."""

    def __init__(self):
        self.generated = 0
        self.kept = 0
        self.trimmed = 0
        self.cut_at_loop = 0
        self.dropped: Counter = Counter()

    def keep(self, trimmed: bool = False, cut: bool = False) -> None:
        self.generated += 1
        self.kept += 1
        self.trimmed += trimmed
        self.cut_at_loop += cut

    def drop(self, reason: str) -> None:
        self.generated += 1
        self.dropped[reason] += 1

    def as_dict(self) -> dict:
        return {
            "generated": self.generated,
            "kept": self.kept,
            "trimmed": self.trimmed,
            "cut_at_loop": self.cut_at_loop,
            "dropped": dict(sorted(self.dropped.items())),
        }
