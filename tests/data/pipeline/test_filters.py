"""Reply filters, near-duplicate detection and the length histogram, against hand-computed values."""

import pytest

from charlit.data.pipeline.card import length_histogram
from charlit.data.pipeline.filters import (
    DropCounter,
    FilterSettings,
    char_ngrams,
    jaccard,
    near_duplicate_of,
    normalise,
    screen,
)
from charlit.data.pipeline.generator import Reply, last_complete_sentences


def _reply(text="A fine answer.", n=10, finished=True, broken=False, trimmed="", trimmed_n=0):
    return Reply(
        text=text, n_tokens=n, finished=finished, format_break=broken, trimmed_text=trimmed, trimmed_tokens=trimmed_n
    )


CUT = dict(text="One. Two and thr", n=12, finished=False, trimmed="One.", trimmed_n=3)


@pytest.mark.parametrize(
    "reply, settings, expected",
    [
        (_reply(), FilterSettings(), None),
        (_reply(text=""), FilterSettings(), "empty"),
        (_reply(finished=False), FilterSettings(unfinished="drop"), "unfinished"),
        (_reply(finished=False), FilterSettings(unfinished="trim"), "unfinished"),  # no complete sentence to keep
        (_reply(finished=False), FilterSettings(unfinished="keep"), None),
        (_reply(**CUT), FilterSettings(unfinished="trim", min_tokens=4), "too_short"),  # judged on the trimmed length
        (_reply(broken=True), FilterSettings(), "format_break"),
        (_reply(broken=True), FilterSettings(drop_format_breaks=False), None),
        (_reply(n=3), FilterSettings(min_tokens=4), "too_short"),
        (_reply(n=4), FilterSettings(min_tokens=4), None),
        (_reply(n=11), FilterSettings(max_tokens=10), "too_long"),
        (_reply(text="", finished=False, broken=True), FilterSettings(), "empty"),  # first reason wins
        (_reply(finished=False, broken=True, n=1), FilterSettings(), "format_break"),
        (_reply(text="I'm sorry. I'm sorry!\nI am fine. i'm SORRY."), FilterSettings(max_repeats=3), "repetitive"),
        (_reply(text="I'm sorry. I'm sorry!\nI am fine. i'm SORRY."), FilterSettings(max_repeats=4), None),
        (_reply(text="I'm sorry. I'm sorry. I'm sorry."), FilterSettings(), None),  # off by default
    ],
)
def test_screen_reasons(reply, settings, expected):
    kept, reason = screen(reply, settings)
    assert reason == expected and (kept is None) == (expected is not None)


def test_trim_keeps_the_complete_sentences():
    kept, reason = screen(_reply(**CUT), FilterSettings(unfinished="trim", min_tokens=2))
    assert reason is None and kept.text == "One." and kept.n_tokens == 3 and kept.was_trimmed
    kept, _ = screen(_reply(**CUT), FilterSettings(unfinished="keep"))
    assert kept.text == "One. Two and thr" and not kept.was_trimmed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello there. How are", "Hello there."),
        ('He said "stop!" and then', 'He said "stop!"'),
        ("Steps:\n1. Boil water\n2. Add the", "Steps:\n1. Boil water"),
        ("Version 2.5 is the", ""),
        ("Done? Yes. Maybe", "Done? Yes."),
        ("no end at all", ""),
    ],
)
def test_last_complete_sentences(text, expected):
    assert last_complete_sentences(text) == expected


def test_filter_settings_from_cfg_checks_keys_and_range():
    assert FilterSettings.from_cfg({"min_tokens": "2", "drop_duplicates": False}) == FilterSettings(
        min_tokens=2, drop_duplicates=False
    )
    with pytest.raises(ValueError, match="unfinished='cut'; choose one of drop, trim, keep"):
        FilterSettings.from_cfg({"unfinished": "cut"})
    with pytest.raises(ValueError, match="unknown keys \\['min_len'\\]"):
        FilterSettings.from_cfg({"min_len": 2})
    with pytest.raises(ValueError, match="min_tokens=9 is above max_tokens=8"):
        FilterSettings.from_cfg({"min_tokens": 9, "max_tokens": 8})


def test_char_ngram_jaccard_by_hand():
    assert normalise("  Hello,   WORLD! ") == "hello world"
    assert char_ngrams("abcd") == {"abc", "bcd"}
    # "abcd" → {abc, bcd}; "abce" → {abc, bce}: one shared of three
    assert jaccard(char_ngrams("abcd"), char_ngrams("abce")) == pytest.approx(1 / 3)
    existing = [char_ngrams("How do I boil an egg?"), char_ngrams("What is the capital of France?")]
    assert near_duplicate_of("how do I boil an EGG", existing, 0.6) == 0
    assert near_duplicate_of("Explain photosynthesis to a child.", existing, 0.6) is None


def test_length_histogram_matches_manual_counts():
    hist = length_histogram([1, 2, 2, 3, 8, 9, 16], bins=4)
    assert hist["edges"] == [1, 5, 9, 13, 17]  # width ceil(16/4) = 4
    assert hist["counts"] == [4, 1, 1, 1]
    assert sum(hist["counts"]) == 7
    assert length_histogram([5, 5], bins=8) == {"edges": [5, 6], "counts": [2]}
    assert length_histogram([]) == {"edges": [], "counts": []}


def test_drop_counter_adds_up():
    c = DropCounter()
    for reason in ["unfinished", None, "duplicate", "unfinished", None]:
        c.drop(reason) if reason else c.keep()
    c.keep(trimmed=True)
    assert c.as_dict() == {
        "generated": 6,
        "kept": 3,
        "trimmed": 1,
        "cut_at_loop": 0,
        "dropped": {"duplicate": 1, "unfinished": 2},
    }


def test_most_repeated_sentence_by_hand():
    from charlit.data.pipeline.filters import most_repeated_sentence

    assert most_repeated_sentence("A b. A b! c\nA B") == 3
    assert most_repeated_sentence("One. Two. Three?") == 1
    assert most_repeated_sentence("") == 0
