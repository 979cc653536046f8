"""Aligning two tokenizations of the same text, for a teacher whose tokenizer is not the student's.

Both sides are read as bytes: every token id maps to the exact UTF-8 bytes it stands for (byte-level BPE through
the GPT-2 byte alphabet; SentencePiece through ``▁`` = space and ``<0xNN>`` byte-fallback pieces; special tokens to
no bytes), so a character split over several byte tokens on one side and held whole by the other still lines up.
A student response is decoded to its bytes, re-tokenized by the teacher, and cut into *groups*: maximal runs of
tokens on each side that end at the same byte offset. A group of one student token and one teacher token is an
*exact* match (both stand for the same bytes); any other group is a *span* whose text both sides spell with
different pieces.

The vocabulary map sends every teacher id to the student id with the same bytes (several teacher ids may share
bytes, e.g. ``▁`` and ``<0x20>``; -1 where the student has no such token), which lets the teacher's next-token
distribution at an exact position be read over the student's vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

PROBE = "Hello  world,\tnaïve café — 🦜 «ok»\n\n  x = {'a': 1}\r\n日本語 done."
"""A string every supported tokenizer must round-trip through its byte table (whitespace runs, tabs, CRLF,
accents, a 4-byte emoji, CJK)."""


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 byte-to-unicode table, inverted: the printable character each byte is written as -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_style(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"cross-tokenizer alignment needs a fast (Rust `tokenizers`) tokenizer; {type(tokenizer).__name__} is not "
            f"one. Load the teacher with its tokenizer.json."
        )
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
    if "ByteLevel" in kinds:
        return "byte_level"
    if (
        "ByteFallback" in kinds
        or "Metaspace" in kinds
        or any(
            d.get("type") == "Replace" and d.get("pattern", {}).get("String") == "▁"
            for d in decoder.get("decoders", [])
        )
    ):
        return "sentencepiece"
    raise ValueError(
        f"cross-tokenizer alignment supports byte-level BPE and SentencePiece tokenizers; this one decodes with "
        f"{sorted(k for k in kinds if k)} and its tokens cannot be mapped to bytes."
    )


def _piece_bytes(piece: str, style: str) -> bytes:
    if style == "byte_level":
        alphabet = _byte_level_alphabet()
        if all(c in alphabet for c in piece):
            return bytes(alphabet[c] for c in piece)
        return piece.encode()  # an added (non-byte-level) token: its text as written
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes of every token id (index = id; special and control tokens map to ``b""``), checked on
    :data:`PROBE`: a tokenizer that does not round-trip it is refused with a one-line error."""
    style = _decoder_style(tokenizer)
    vocab = tokenizer.get_vocab()
    table = [b""] * (max(vocab.values()) + 1)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    for piece, i in vocab.items():
        if i not in special:
            table[i] = _piece_bytes(piece, style)
    ids = tokenizer.encode(PROBE, add_special_tokens=False)
    spelled = b"".join(table[i] for i in ids)
    if spelled != PROBE.encode():
        raise ValueError(
            f"cross-tokenizer alignment: {type(tokenizer).__name__} ({style}) spells {PROBE!r} as {spelled!r} through "
            f"its token bytes; its text cannot be aligned with another tokenizer's."
        )
    return table


def vocabulary_map(teacher_bytes: list[bytes], student_bytes: list[bytes]) -> torch.Tensor:
    """``[V_teacher]`` int64: the student id with the same non-empty bytes as each teacher id, else -1. Where the
    student has several ids for the same bytes the lowest is used."""
    student = {}
    for i, b in enumerate(student_bytes):
        if b and b not in student:
            student[b] = i
    return torch.tensor([student.get(b, -1) if b else -1 for b in teacher_bytes], dtype=torch.long)


@dataclass
class Group:
    """Student tokens ``[s0, s1)`` and teacher tokens ``[t0, t1)`` (response-relative) spelling the same bytes."""

    s0: int
    s1: int
    t0: int
    t1: int

    @property
    def exact(self) -> bool:
        return self.s1 - self.s0 == 1 and self.t1 - self.t0 == 1


def align(student_ids: list[int], teacher_ids: list[int], student_bytes, teacher_bytes) -> list[Group]:
    """Cut two tokenizations of the same bytes into groups that end at the byte offsets both share. A token with
    no bytes (a special one) joins the group it follows (the first group when it leads)."""
    s_ends = _ends(student_ids, student_bytes)
    t_ends = _ends(teacher_ids, teacher_bytes)
    if s_ends[-1:] != t_ends[-1:]:
        raise ValueError(
            f"cross-tokenizer alignment: the student's {len(student_ids)} tokens spell {s_ends[-1] if s_ends else 0} "
            f"bytes and the teacher's {len(teacher_ids)} tokens {t_ends[-1] if t_ends else 0}; they are not the same "
            f"text."
        )
    # the last token index ending at each offset (so zero-byte tokens stay with the token before them)
    s_last = {end: i for i, end in enumerate(s_ends)}
    t_last = {end: i for i, end in enumerate(t_ends)}
    groups, s0, t0 = [], 0, 0
    for end in sorted(set(s_last) & set(t_last)):
        if end == 0:
            continue
        s1, t1 = s_last[end] + 1, t_last[end] + 1
        groups.append(Group(s0, s1, t0, t1))
        s0, t0 = s1, t1
    return groups


def _ends(ids: list[int], table: list[bytes]) -> list[int]:
    ends, total = [], 0
    for i in ids:
        total += len(table[i])
        ends.append(total)
    return ends
