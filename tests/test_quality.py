"""The text-quality rules against hand-counted examples."""

import zlib

import pytest

from charlit.quality import (
    DEFAULT_RULE,
    LoopRule,
    QualityGate,
    compression_ratio,
    copy_candidates,
    distinct_n,
    gated_scores,
    loop_span,
    loops,
    recitation,
    repeat_positions,
    reply_quality,
)


def test_a_four_gram_three_times_within_the_window_loops():
    phrase = "and I am a man of the world ,".split()
    text = phrase * 3
    # the 4-gram "and I am a" starts at 0, 9 and 18: the third occurrence completes the loop at index 18
    assert loop_span(text) == 18
    assert loops(text) and not loops(phrase * 2)


def test_repeats_further_apart_than_the_window_do_not_loop():
    filler = [f"w{i}" for i in range(40)]
    tokens = ["a", "b", "c", "d"] + filler + ["a", "b", "c", "d"] + filler + ["a", "b", "c", "d"]
    assert not loops(tokens)  # first to last occurrence spans 92 tokens > 64
    assert loops(tokens, LoopRule(n=4, min_count=3, window=100))
    assert loops(tokens, LoopRule(n=4, min_count=2, window=64))


def test_a_bad_rule_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="window >= n \\* min_count"):
        LoopRule(n=4, min_count=3, window=8)


def test_distinct_n_and_compression_by_hand():
    assert distinct_n(["a", "b", "a", "b"], 1) == 0.5  # 2 distinct of 4
    assert distinct_n(["a", "b", "a", "b"], 2) == 2 / 3  # ab, ba, ab
    assert distinct_n(["a"], 2) == 1.0
    text = "la " * 50
    assert compression_ratio(text) == len(text.encode()) / len(zlib.compress(text.encode(), 9))
    assert compression_ratio(text) > 5 > compression_ratio("The quick brown fox jumps over the lazy dog.")


def test_reply_quality_and_the_gate():
    ids = [5, 6, 7, 8] * 3 + [2]
    q = reply_quality(ids, "x y z w x y z w x y z w", end_ids=[2])
    assert q.ended and q.loops and not q.coherent and q.distinct_1 == 4 / 12
    assert q.loops_by_rule[DEFAULT_RULE.label]
    fine = reply_quality([5, 6, 7, 8, 9], "Arr, a fine day.", end_ids=[2])
    assert fine.coherent and not fine.ended
    assert not QualityGate().passes([1, 2, 3], "   ")  # an empty reply is no reply
    assert not QualityGate(max_compression=2.0).passes(list(range(10)), "ha" * 40)


def test_gated_scores_put_failing_replies_at_the_floor():
    assert gated_scores([0.9, 0.4, 1.2], [True, False, False], floor=-0.2) == [0.9, -0.2, -0.2]
    with pytest.raises(ValueError, match="3 scores but 2"):
        gated_scores([1, 2, 3], [True, False], 0.0)


def test_recitation_counts_word_five_grams_found_in_the_source():
    source = "I speak in the language of the sea, with salty words and a love of ships."
    assert recitation("I speak in the language of the sea, with salty words", source) == 1.0
    # 11 words -> 7 five-grams; "i speak in the language" and "speak in the language of" stand in the source
    assert recitation("I speak in the language of my home town every day", source) == 2 / 7
    assert recitation("Arr!", source) == 0.0
    assert not QualityGate().passes([1, 2, 3, 4], "I speak in the language of the sea, with salty words", source)
    assert QualityGate(max_recitation=1.0).passes([1, 2, 3, 4], "I speak in the language of the sea", source)


def test_the_fluency_check_needs_both_numbers_and_applies_the_margin():
    gate = QualityGate(fluency_margin=2.5)
    ids, text = [1, 2, 3], "ship sail plank rum parrot"
    assert gate.passes(ids, text, fluency=-9.0)  # no reference: no check
    assert gate.passes(ids, text, fluency=-4.4, reference_fluency=-2.0)  # 2.4 nats below: kept
    assert not gate.passes(ids, text, fluency=-4.6, reference_fluency=-2.0)  # 2.6 nats below: fails


def test_repeat_positions_marks_tokens_that_complete_an_earlier_ngram():
    # hand-marked: "abc" ends at 2, again at 6 and 9; in "abcabcabc" every 3-gram from index 5 on is a repeat
    assert repeat_positions(list("abcxabcabc"), n=3) == [6, 9]
    assert repeat_positions(list("abcabcabc"), n=3) == [5, 6, 7, 8]
    assert repeat_positions(list("abcd"), n=2) == [] and repeat_positions([], n=4) == []
    assert repeat_positions([1, 1, 1, 1], n=1) == [1, 2, 3]


def test_copy_candidates_are_the_tokens_that_would_continue_an_earlier_ngram():
    # "a b c a b d a b": after the second "a b" (t=5) taking "c" would repeat "a b c"; after the third "a b" there
    # is no position left. After "b" at t=2 nothing followed "b" yet.
    assert copy_candidates(list("abcabdab"), n=3) == [(5, "c")]
    # one more token: at t=8 both "c" and "d" (in order of first occurrence) would repeat an earlier 3-gram
    assert copy_candidates(list("abcabdabe"), n=3) == [(5, "c"), (8, "c"), (8, "d")]
    # n=2: the tokens that followed earlier occurrences of the previous token; at t=2 "b" had not been followed yet
    assert copy_candidates(list("abab"), n=2) == [(3, "b")]
    # n=1: every token seen before t (a presence penalty's set), each once
    assert copy_candidates([7, 8, 7], n=1) == [(1, 7), (2, 7), (2, 8)]
    assert copy_candidates([], n=3) == [] and copy_candidates(list("abcd"), n=3) == []
    with pytest.raises(ValueError, match="n >= 1"):
        copy_candidates([1, 2], n=0)
