"""Text quality of a generated reply, without any judge: looping, distinct-n, compression ratio, ending.

Every persona judge can be won by degenerate text (a loop of in-character words scores as strong persona on
the likelihood judge), so every reply charlit scores is also measured here, and every persona score has a
*coherence-gated* twin in which a reply that fails :class:`QualityGate` counts as no gain (see
``docs/evaluation.md``, "Text quality and the coherence gate").

The looping rule: a reply *loops* when some ``n``-token sequence occurs at least ``min_count`` times within
``window`` consecutive tokens (default: a 4-gram 3 times within 64 tokens). The family of thresholds is the
three numbers; :data:`LOOP_RULES` lists the ones reports show beside the default. This module depends on
nothing else in charlit, so data filters, validation and evaluation all apply the same rule.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopRule:
    n: int = 4
    min_count: int = 3
    window: int = 64

    def __post_init__(self):
        if self.n < 1 or self.min_count < 2 or self.window < self.n * self.min_count:
            raise ValueError(
                f"loop rule n={self.n}, min_count={self.min_count}, window={self.window} is not valid: "
                f"n >= 1, min_count >= 2 and window >= n * min_count (e.g. 4, 3, 64)."
            )

    @property
    def label(self) -> str:
        return f"{self.n}gram_x{self.min_count}_in{self.window}"


DEFAULT_RULE = LoopRule()
LOOP_RULES = (LoopRule(3, 3, 64), DEFAULT_RULE, LoopRule(4, 2, 64), LoopRule(8, 2, 128))


def loop_span(tokens: Sequence, rule: LoopRule = DEFAULT_RULE) -> int | None:
    """The index at which the first loop completes (the start of the ``min_count``-th repeat), or None.

    Tokens can be ids or words: anything hashable.
    """
    positions: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(tokens) - rule.n + 1):
        seen = positions[tuple(tokens[i : i + rule.n])]
        seen.append(i)
        if len(seen) >= rule.min_count and i + rule.n - seen[-rule.min_count] <= rule.window:
            return i
    return None


def repeat_positions(tokens: Sequence, n: int = 4) -> list[int]:
    """Indices ``t`` where the ``n``-gram ending at ``t`` already ended somewhere before ``t``: the tokens that
    continue a copy of earlier text (the candidates of repetition unlikelihood training)."""
    seen: set[tuple] = set()
    repeats = []
    for t in range(n - 1, len(tokens)):
        gram = tuple(tokens[t - n + 1 : t + 1])
        if gram in seen:
            repeats.append(t)
        seen.add(gram)
    return repeats


def copy_candidates(tokens: Sequence, n: int = 3) -> list[tuple[int, object]]:
    """Pairs ``(t, v)``: at position ``t`` the token ``v`` would complete an ``n``-gram that already occurs in
    ``tokens[:t]`` (its ``n - 1`` tokens before ``t`` occurred earlier, followed by ``v``). These are the next
    tokens that continue a copy of the text so far, whether or not the sequence took them; ``n = 1`` gives every
    token seen before ``t`` (a presence penalty's set). Sorted by ``t``, then by first occurrence."""
    if n < 1:
        raise ValueError(f"copy_candidates needs n >= 1, got n={n}.")
    followers: dict[tuple, dict] = {}  # (n-1)-gram -> the tokens seen after it, in order (a dict keeps order)
    pairs = []
    for t in range(len(tokens)):
        if t >= n - 1:
            context = tuple(tokens[t - n + 1 : t])
            pairs += [(t, v) for v in followers.get(context, ())]
            followers.setdefault(context, {})[tokens[t]] = None
    return pairs


def loops(tokens: Sequence, rule: LoopRule = DEFAULT_RULE) -> bool:
    return loop_span(tokens, rule) is not None


def distinct_n(tokens: Sequence, n: int) -> float:
    """Distinct ``n``-grams over all ``n``-grams (1.0 for a reply shorter than ``n``: nothing repeats)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes: about 1–2 for prose, higher for repetitive text (Whisper flags
    transcripts above 2.4). An empty text gives 1.0."""
    raw = text.encode("utf-8")
    if not raw:
        return 1.0
    return len(raw) / len(zlib.compress(raw, 9))


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def recitation(text: str, source: str, n: int = 5) -> float:
    """The fraction of the reply's word ``n``-grams that stand in ``source`` (e.g. the constitution): 1.0 for a reply
    pasted from it, near 0 for a reply in the persona's voice. A reply shorter than ``n`` words scores 0."""
    reply = words(text)
    grams = {tuple(reply[i : i + n]) for i in range(len(reply) - n + 1)}
    if not grams:
        return 0.0
    known = words(source)
    return len(grams & {tuple(known[i : i + n]) for i in range(len(known) - n + 1)}) / len(grams)


@dataclass(frozen=True)
class QualityGate:
    """Which replies count as coherent: not empty, no loop under ``rule``, not recited from the constitution (more
    than ``max_recitation`` of its word 5-grams; 1 = off), and, where the bare base's per-token log-likelihood of
    the reply (its *fluency*) is known, not more than ``fluency_margin`` nats below that of the bare base's own
    replies (a list of persona keywords is unlikely text). ``max_compression`` (0 = off) also fails highly
    compressible replies."""

    rule: LoopRule = DEFAULT_RULE
    max_recitation: float = 0.5
    fluency_margin: float = 2.5
    max_compression: float = 0.0

    def passes(
        self,
        tokens: Sequence,
        text: str,
        source: str = "",
        fluency: float | None = None,
        reference_fluency: float | None = None,
    ) -> bool:
        """``source``: text the reply must not recite; ``fluency`` / ``reference_fluency``: the reply's and the bare
        base's mean per-token log-likelihood under the bare base (either None: no fluency check)."""
        if not text.strip() or loops(tokens, self.rule):
            return False
        if source and recitation(text, source) > self.max_recitation:
            return False
        if not self.fluent(fluency, reference_fluency):
            return False
        return not (self.max_compression > 0 and compression_ratio(text) > self.max_compression)

    def fluent(self, fluency: float | None, reference_fluency: float | None) -> bool:
        """The fluency part of the gate alone (True when either number is unknown)."""
        return fluency is None or reference_fluency is None or fluency >= reference_fluency - self.fluency_margin


@dataclass(frozen=True)
class ReplyQuality:
    loops: bool
    loops_by_rule: dict
    distinct_1: float
    distinct_2: float
    compression: float
    ended: bool  # the reply ends with an end-of-turn token (it finished)
    recitation: float  # share of its word 5-grams found in the source (the constitution)
    coherent: bool  # passes the gate


def reply_quality(
    tokens: Sequence[int],
    text: str,
    end_ids: Sequence[int] = (),
    gate: QualityGate = QualityGate(),
    source: str = "",
    fluency: float | None = None,
    reference_fluency: float | None = None,
) -> ReplyQuality:
    """Every text-quality number for one reply (``tokens``: its ids as sampled, end-of-turn token included); the
    last three arguments go to :meth:`QualityGate.passes`."""
    body = list(tokens)
    ended = bool(body) and body[-1] in set(end_ids)
    if ended:
        body = body[:-1]
    return ReplyQuality(
        loops=loops(body, gate.rule),
        loops_by_rule={r.label: loops(body, r) for r in LOOP_RULES},
        distinct_1=distinct_n(body, 1),
        distinct_2=distinct_n(body, 2),
        compression=compression_ratio(text),
        ended=ended,
        recitation=recitation(text, source) if source else 0.0,
        coherent=gate.passes(body, text, source, fluency, reference_fluency),
    )


def gated_scores(scores: Sequence[float], coherent: Sequence[bool], floor: float) -> list[float]:
    """The coherence-gated twin of per-reply persona scores: a reply that fails the gate scores ``floor`` (the
    bare base's level: no gain), whatever the judge said."""
    if len(scores) != len(coherent):
        raise ValueError(f"{len(scores)} scores but {len(coherent)} coherence flags.")
    return [float(s) if ok else float(floor) for s, ok in zip(scores, coherent)]
