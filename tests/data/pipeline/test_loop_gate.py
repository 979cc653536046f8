"""The evaluation's loop gate in the data pipeline: looping replies are cut before the loop or dropped, the cut
ends an interaction, the card counts both, and best-of-k keeps the first reply that passes."""

import pytest
from omegaconf import OmegaConf

from charlit.data.pipeline.filters import FilterSettings, best_replies, screen
from charlit.data.pipeline.generator import Generator, Reply
from charlit.data.pipeline.interaction import InteractionStage
from charlit.data.pipeline.stage import StageContext
from charlit.models import load_model
from charlit.sampling import SamplingParams
from charlit.sampling.hf import HFSampler

LOOP = "Ahoy there, matey. The sea is wide and the sea is wide and the sea is wide and the sea is wide"


def _generator(tokenizer):
    loaded = load_model(
        OmegaConf.create({"name_or_path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1}}), tokenizer
    )
    return Generator(loaded, HFSampler(tokenizer), SamplingParams(max_new_tokens=4))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_decode_marks_a_loop_on_token_ids_and_keeps_the_sentences_before_it(tokenizer):
    gen = _generator(tokenizer)
    looped = gen.decode(_ids(tokenizer, LOOP))
    assert looped.loops and looped.unlooped_text == "Ahoy there, matey."
    assert looped.unlooped_tokens == len(_ids(tokenizer, "Ahoy there, matey.")) + 1
    plain = gen.decode(_ids(tokenizer, "Ahoy there, matey. The sea is wide."))
    assert not plain.loops and plain.unlooped_text == ""
    assert Reply.from_dict(looped.as_dict()) == looped


def _looping(unlooped="Ahoy there, matey.", tokens=6):
    return Reply(
        text=LOOP,
        n_tokens=40,
        finished=False,
        format_break=False,
        loops=True,
        unlooped_text=unlooped,
        unlooped_tokens=tokens,
    )


@pytest.mark.parametrize(
    "loops, reply, expected",
    [
        ("cut", _looping(), ("Ahoy there, matey.", None)),
        ("cut", _looping(unlooped="", tokens=0), (None, "looping")),
        ("cut", _looping(tokens=2), (None, "too_short")),
        ("drop", _looping(), (None, "looping")),
    ],
)
def test_screen_cuts_or_drops_a_looping_reply(loops, reply, expected):
    kept, problem = screen(reply, FilterSettings(loops=loops, min_tokens=4))
    assert ((kept.text if kept else None), problem) == expected
    if kept:
        assert kept.was_cut and kept.finished and kept.n_tokens == 6


def test_keep_leaves_a_looping_reply_to_the_other_filters():
    kept, problem = screen(_looping(), FilterSettings(loops="keep", unfinished="keep"))
    assert problem is None and kept.text == LOOP and not kept.was_cut


def test_filter_settings_check_loops_and_best_of():
    with pytest.raises(ValueError, match="loops='trim'.*cut, drop, keep"):
        FilterSettings.from_cfg({"loops": "trim"})
    with pytest.raises(ValueError, match="best_of=0"):
        FilterSettings.from_cfg({"best_of": 0})


class _ScriptedGenerator:
    """Returns scripted replies in order and records the requests (a stand-in for sampling, not for the filters)."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def reply(self, conversations, seed, desc=None):
        self.requests.append(len(conversations))
        out, self.replies = self.replies[: len(conversations)], self.replies[len(conversations) :]
        return out


def _ok(text):
    return Reply(text=text, n_tokens=8, finished=True, format_break=False)


def test_best_of_k_keeps_the_first_passing_sample_else_the_first():
    settings = FilterSettings(loops="drop", best_of=3)
    gen = _ScriptedGenerator([_looping(), _ok("second"), _ok("third"), _looping(), _looping(), _looping()])
    chosen = best_replies(
        gen, [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], 0, "x", settings
    )
    assert gen.requests == [6]  # both requests' three samples in one batch
    assert chosen[0].text == "second" and chosen[1].loops
    single = _ScriptedGenerator([_looping()])
    assert best_replies(single, [[{"role": "user", "content": "a"}]], 0, "x", FilterSettings())[0].loops


def test_a_looping_turn_ends_the_interaction_and_is_counted(tmp_path, pirate):
    ctx = StageContext(pirate, FilterSettings(), 0, 4, tmp_path, {"name": "hf", "batch_size": 4})
    script = [_ok("a1"), _ok("other a1"), _ok("b1"), _looping(), _ok("never said")]
    stage = InteractionStage(ctx, _ScriptedGenerator(script), 2, 3, ["free"])
    raw = stage.work([[0, "free"], [1, "free"]], seed=0)
    assert raw[0]["transcript"] == ["a1", "b1", "never said"] and raw[0]["stop"] is None
    assert raw[1]["transcript"] == ["other a1", "Ahoy there, matey."] and raw[1]["stop"] == "looping"
    out = stage.assemble(raw)
    assert out.counts["cut_at_loop"] == 1 and out.counts["conversations_ended_at_loop"] == 1
    assert out.counts["kept"] == 5 and out.counts["conversations_full_length"] == 1
