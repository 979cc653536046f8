"""Aligning two tokenizations on their bytes (charlit.teachers.alignment)."""

import pytest

from charlit.teachers.alignment import Group, align, token_bytes, vocabulary_map
from tests.teachers.test_external import _word_level_tokenizer
from tests.teachers.tokenizers import byte_fallback_tokenizer

# hand-made byte tables: id -> bytes (id 0: a special token, no bytes)
STUDENT = [b"", b"ab", b"c", b"a", b"bc", b"\xf0\x9f", b"\xa6\x9c", b" x"]
TEACHER = [b"", b"a", b"bc", b"ab", b"c", b"\xf0", b"\x9f\xa6\x9c", b" ", b"x"]


def test_groups_end_where_both_sides_share_a_byte_offset():
    # "ab|c" against "a|bc": one span group; "ab|c" against "ab|c": two exact groups
    assert align([1, 2], [1, 2], STUDENT, TEACHER) == [Group(0, 2, 0, 2)]
    groups = align([1, 2], [3, 4], STUDENT, TEACHER)
    assert groups == [Group(0, 1, 0, 1), Group(1, 2, 1, 2)] and all(g.exact for g in groups)
    # an emoji split 2+2 bytes against 1+3, then " x" against " "+"x"
    assert align([5, 6, 7], [5, 6, 7, 8], STUDENT, TEACHER) == [Group(0, 2, 0, 2), Group(2, 3, 2, 4)]


def test_zero_byte_tokens_join_the_group_before_them_or_the_first():
    assert align([1, 0, 2], [3, 4], STUDENT, TEACHER) == [Group(0, 2, 0, 1), Group(2, 3, 1, 2)]
    assert align([0, 1, 2], [3, 4], STUDENT, TEACHER) == [Group(0, 2, 0, 1), Group(2, 3, 1, 2)]
    assert align([], [], STUDENT, TEACHER) == []


def test_different_text_is_refused():
    with pytest.raises(ValueError, match="spell 3 bytes and the teacher's 1 tokens 2"):
        align([1, 2], [3], STUDENT, TEACHER)


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    from charlit.models.bundled import converted_dir

    return AutoTokenizer.from_pretrained(converted_dir(with_weights=False)), byte_fallback_tokenizer()


@pytest.mark.parametrize(
    "text",
    [
        "Arr, the sea is calm.",
        "two  spaces,\ttab and\n\nnewlines  ",
        "naïve café — «ok»",
        "a parrot 🦜 and 日本語",
        " leading space",
    ],
)
def test_real_tokenizers_align_on_whitespace_unicode_and_byte_fallback(tokenizers, text):
    student, teacher = tokenizers
    s_bytes, t_bytes = token_bytes(student), token_bytes(teacher)
    s_ids = student.encode(text, add_special_tokens=False)
    t_ids = teacher.encode(text, add_special_tokens=False)
    assert b"".join(s_bytes[i] for i in s_ids) == text.encode() == b"".join(t_bytes[i] for i in t_ids)
    groups = align(s_ids, t_ids, s_bytes, t_bytes)
    assert groups[0].s0 == groups[0].t0 == 0 and (groups[-1].s1, groups[-1].t1) == (len(s_ids), len(t_ids))
    for before, after in zip(groups, groups[1:]):
        assert (before.s1, before.t1) == (after.s0, after.t0)
    for g in groups:  # each group spells the same bytes on both sides, and no shorter prefix does
        s_text = b"".join(s_bytes[i] for i in s_ids[g.s0 : g.s1])
        assert s_text == b"".join(t_bytes[i] for i in t_ids[g.t0 : g.t1])
        s_cuts = {len(b"".join(s_bytes[i] for i in s_ids[g.s0 : j])) for j in range(g.s0 + 1, g.s1)}
        t_cuts = {len(b"".join(t_bytes[i] for i in t_ids[g.t0 : j])) for j in range(g.t0 + 1, g.t1)}
        assert not (s_cuts & t_cuts)
    if "the" in text:  # " the" is one token in both vocabularies: an exact group
        assert any(g.exact and s_bytes[s_ids[g.s0]] == b" the" for g in groups)
    if "🦜" in text:  # " \xf0\x9f" | a6 | 9c against "▁" f0 | 9f | a6 | 9c: a span group, then two exact bytes
        emoji = [g for g in groups if s_bytes[s_ids[g.s0]] == b" \xf0\x9f"]
        assert emoji and not emoji[0].exact and emoji[0].t1 - emoji[0].t0 == 3
        after = groups[groups.index(emoji[0]) + 1 :][:2]
        assert all(g.exact for g in after) and [s_bytes[s_ids[g.s0]] for g in after] == [b"\xa6", b"\x9c"]


def test_vocabulary_map_sends_byte_identical_tokens_to_one_student_id(tokenizers):
    student, teacher = tokenizers
    s_bytes, t_bytes = token_bytes(student), token_bytes(teacher)
    vmap = vocabulary_map(t_bytes, s_bytes)
    space = student.convert_tokens_to_ids("Ġ")
    assert vmap[teacher.convert_tokens_to_ids("▁")] == vmap[teacher.convert_tokens_to_ids("<0x20>")] == space
    assert vmap[teacher.convert_tokens_to_ids("▁the")] == student.convert_tokens_to_ids("Ġthe")
    # a byte-fallback piece maps to the byte-level token for the same byte (written "ð" in GPT-2's alphabet)
    assert vmap[teacher.convert_tokens_to_ids("<0xF0>")] == student.convert_tokens_to_ids("ð")
    assert vmap[teacher.convert_tokens_to_ids("<0x09>")] == student.convert_tokens_to_ids("ĉ")
    assert vmap[teacher.eos_token_id] == -1  # special tokens have no bytes


def test_a_tokenizer_without_a_byte_decoder_cannot_be_aligned():
    with pytest.raises(ValueError, match="supports byte-level BPE and SentencePiece.*cannot be mapped to bytes"):
        token_bytes(_word_level_tokenizer(["ahoy", "matey"]))
