"""The persona-vector judge's machinery on the tiny model, against hand computations (its validation on the default
model is `python -m charlit.eval.judges.persona_vector`, figures in docs/evaluation.md)."""

import pytest
import torch

from charlit.data.chat import render_prompt_ids, student_messages
from charlit.eval.judges import Reply, build_judge
from charlit.eval.judges.persona_vector import (
    PersonaVectors,
    choose_layer,
    cohens_d,
    directions,
    reply_activations,
    validate,
)
from charlit.models.tiny import tiny_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(len(tokenizer), seed=4).eval()


def test_activations_are_the_mean_hidden_state_over_the_reply_whatever_the_padding(model, tokenizer):
    prompts = ["Tell me about ships.", [{"role": "user", "content": "Hi"}]]
    replies = [[504, 2730, 30], [1159, 314, 253, 28, 90, 11]]
    acts = reply_activations(model, tokenizer, prompts, replies, batch_size=2)
    assert acts.shape == (2, model.config.num_hidden_layers + 1, model.config.hidden_size)
    for row, (prompt, reply) in enumerate(zip(prompts, replies)):
        context = render_prompt_ids(tokenizer, student_messages(prompt))
        with torch.no_grad():
            hidden = model(torch.tensor([context + reply]), output_hidden_states=True).hidden_states
        expected = torch.stack([h[0, len(context) :].mean(dim=0) for h in hidden])
        assert torch.allclose(acts[row], expected, atol=1e-5)


def test_cohens_d_and_unit_directions_by_hand():
    pos, neg = torch.tensor([[2.0], [4.0]]), torch.tensor([[0.0], [2.0]])  # means 3 and 1, both variances 2
    assert cohens_d(pos, neg).item() == pytest.approx(2 / 2**0.5)
    prompted = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])  # [n, layers, H]
    bare = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]])
    assert directions(prompted, bare)[0].tolist() == pytest.approx([2 / 5**0.5, -1 / 5**0.5])


def test_the_layer_that_separates_held_out_halves_is_chosen_and_never_the_embeddings():
    gen = torch.Generator().manual_seed(0)
    prompted, bare = torch.randn(12, 4, 8, generator=gen), torch.randn(12, 4, 8, generator=gen)
    prompted[:, 2, 0] += 5.0  # layer 2 moves along one axis for every prompted reply
    prompted[:, 0, 1] += 50.0  # the embeddings separate even more, but are excluded
    layer, scores = choose_layer(prompted, bare)
    assert layer == 2 and scores[2] > 2 and scores[0] == float("-inf")


def test_the_judge_scores_projections_at_the_chosen_layer_and_caches_activations(
    model, tokenizer, pirate, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHARLIT_CACHE", str(tmp_path))
    vectors = PersonaVectors.load_or_build(model, tokenizer, batch_size=16)
    cached = list((tmp_path / "judges").glob("persona-vectors-*.safetensors"))
    assert len(cached) == 1 and vectors.activations.shape[0] == len(vectors.rows) == 210
    again = PersonaVectors.load_or_build(model, tokenizer)
    assert torch.equal(again.activations, vectors.activations)
    judge = build_judge("persona_vector", base_model=model, tokenizer=tokenizer, vectors=vectors)
    reply = Reply("What's for dinner?", (504, 2730, 30), "x")
    fit = judge.fitted(pirate)
    expected = (
        reply_activations(model, tokenizer, [reply.prompt], [list(reply.ids)])[0, fit["layer"]] @ fit["direction"]
    )
    assert judge.score([reply], pirate) == pytest.approx([float(expected)], abs=1e-6)
    rows = validate(vectors)
    assert {r["persona"] for r in rows} == {"mathematician", "pirate", "poet", "sarcastic", "stoic", "warm"}
    assert all(r["layer"] >= 1 for r in rows)


def test_unknown_personas_are_refused_with_what_to_do(model, tokenizer, tmp_path, monkeypatch):
    from charlit.data.constitution import Constitution

    monkeypatch.setenv("CHARLIT_CACHE", str(tmp_path))
    judge = build_judge("persona_vector", base_model=model, tokenizer=tokenizer, batch_size=16)
    other = Constitution(name="gardener", description="A gardener.", traits=())
    with pytest.raises(ValueError, match="drop `persona_vector` from eval.judges"):
        judge.score([], other)
