"""Every judge is validated on the bundled held-out replies of the default model (prompts the classifier never
trained on): it must rank the constitution-prompted base above the bare base for every shipped persona, and
score a persona's replies higher under its own constitution than under the other shipped constitutions (on
average; against each other one separately the measured limits are recorded). The likelihood judge needs the
default model for 6×6 persona/constitution pairs (minutes): those tests are marked slow."""

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlit.data.constitution import bundled_personas, resolve_persona
from charlit.eval.build_judge_data import BARE
from charlit.eval.judges import Reply, build_judge, classifier
from charlit.eval.judges.classifier import load_rows
from charlit.eval.stats import macro_f1

PERSONAS = bundled_personas()


def _replies(rows, persona, tokenizer=None, limit=None):
    chosen = [r for r in rows if r["persona"] == persona][:limit]
    ids = (
        (
            lambda t: (
                tuple(tokenizer(t, add_special_tokens=False)["input_ids"])
                + (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
            )
        )
        if tokenizer
        else (lambda t: ())
    )
    return [Reply(r["prompt"], ids(r["reply"]), r["reply"]) for r in chosen]


@pytest.fixture(scope="module")
def heldout():
    return load_rows("heldout")


def test_heldout_replies_cover_every_persona_and_are_disjoint_from_training(heldout):
    train_prompts = {r["prompt"] for r in load_rows("train")}
    assert {r["persona"] for r in heldout} == {BARE, *PERSONAS}
    assert not train_prompts & {r["prompt"] for r in heldout}


@pytest.fixture(scope="module")
def classifier_judge():
    return build_judge("classifier", base_model=None, tokenizer=None)


def test_classifier_ranks_prompted_above_bare_for_every_persona(classifier_judge, heldout):
    bare = _replies(heldout, BARE)
    for persona in PERSONAS:
        constitution = resolve_persona(persona)
        prompted = sum(classifier_judge.score(_replies(heldout, persona), constitution)) / len(bare)
        unprompted = sum(classifier_judge.score(bare, constitution)) / len(bare)
        assert prompted > unprompted, (persona, prompted, unprompted)


def _own_and_others(judge, replies, persona):
    scores = {other: sum(judge.score(replies, resolve_persona(other))) / len(replies) for other in PERSONAS}
    return scores.pop(persona), scores


def test_classifier_scores_replies_higher_under_their_own_constitution_than_under_the_others(classifier_judge, heldout):
    for persona in PERSONAS:
        own, others = _own_and_others(classifier_judge, _replies(heldout, persona), persona)
        assert own > sum(others.values()) / len(others), (persona, own, others)


@pytest.mark.xfail(
    strict=True,
    reason="measured: the prompted 135M default barely separates mathematician, sarcastic "
    "and stoic (their replies score higher under warm/poet); passes once the judge data separates them",
)
def test_classifier_scores_replies_higher_under_their_own_constitution_than_under_each_other(classifier_judge, heldout):
    for persona in PERSONAS:
        own, others = _own_and_others(classifier_judge, _replies(heldout, persona), persona)
        assert all(own > v for v in others.values()), (persona, own, others)


def test_classifier_macro_f1_across_personas_is_well_above_chance(classifier_judge, heldout):
    rows = [r for r in heldout if r["persona"] != BARE]
    predicted = classifier_judge.classifier.predict([r["reply"] for r in rows])
    assert macro_f1([r["persona"] for r in rows], predicted, PERSONAS) >= 0.25  # chance: 1/6


def test_classifier_refuses_an_unknown_persona(classifier_judge, heldout):
    from charlit.data.constitution import Constitution, Trait

    stranger = Constitution("stranger", "", (Trait("I am new.", ("hi",)),))
    with pytest.raises(ValueError, match="not 'stranger'"):
        classifier_judge.score(_replies(heldout, BARE, limit=1), stranger)


def test_unknown_judge_name_lists_the_choices():
    with pytest.raises(ValueError, match="valid choices: classifier, likelihood"):
        build_judge("oracle", base_model=None, tokenizer=None)


@pytest.fixture(scope="module")
def likelihood_judge():
    from charlit.models import load_model

    loaded = load_model(OmegaConf.create({"name_or_path": "bundled:smollm2-135m-instruct"}), apply_lora=False)
    return build_judge(
        "likelihood", base_model=loaded.model.eval(), tokenizer=loaded.tokenizer, batch_size=12
    ), loaded.tokenizer


@pytest.mark.slow
def test_likelihood_judge_ranks_prompted_above_bare_for_every_persona(likelihood_judge, heldout):
    judge, tokenizer = likelihood_judge
    bare = _replies(heldout, BARE, tokenizer, limit=6)
    for persona in PERSONAS:
        constitution = resolve_persona(persona)
        prompted = _replies(heldout, persona, tokenizer, limit=6)
        assert sum(judge.score(prompted, constitution)) > sum(judge.score(bare, constitution)), persona


@pytest.mark.slow
def test_likelihood_judge_scores_replies_higher_under_their_own_constitution_than_under_the_others(
    likelihood_judge, heldout
):
    judge, tokenizer = likelihood_judge
    for persona in PERSONAS:
        own, others = _own_and_others(judge, _replies(heldout, persona, tokenizer, limit=6), persona)
        assert own > sum(others.values()) / len(others), (persona, own, others)


class _Planted:
    """Pickles to a call of ``Path.touch(marker)``: unpickling it runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_classifier_cache_holding_pickled_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLIT_CACHE", str(tmp_path))
    monkeypatch.setattr(classifier, "SentenceEmbedder", lambda: None)
    cached = tmp_path / "judges" / f"persona-classifier-{classifier._cache_key(classifier.DATA_PATH)}.pt"
    cached.parent.mkdir()
    torch.save({"classes": [BARE], "weight": _Planted(tmp_path / "RAN"), "bias": torch.zeros(1)}, cached)
    with pytest.raises(ValueError, match="will not load it; delete it") as err:
        classifier.bundled_classifier()
    assert str(cached) in str(err.value) and isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not (tmp_path / "RAN").exists()
    torch.load(cached, weights_only=False)  # what a plain torch.load did on torch < 2.6: run the planted code
    assert (tmp_path / "RAN").exists()
