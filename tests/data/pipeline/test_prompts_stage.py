"""The prompts stage: seeded selection, few-shot generated prompts, near-duplicate filtering."""

import json

from charlit.data.pipeline import generate_dataset
from charlit.data.pipeline.filters import FilterSettings
from charlit.data.pipeline.prompts import GeneratedPromptsStage, first_question, select_prompts
from charlit.data.pipeline.stage import StageContext
from charlit.data.prompts import training_prompts
from tests.data.pipeline.helpers import tiny_cfg


def test_select_prompts_is_a_seeded_subset_in_source_order(pirate):
    every = training_prompts(["constitution", "general_train"], pirate)
    picked = select_prompts(["constitution", "general_train"], pirate, 10, seed=3)
    assert len(picked) == 10 and picked == [p for p in every if p in set(picked)]
    assert select_prompts(["constitution", "general_train"], pirate, 10, seed=3) == picked
    assert select_prompts(["constitution", "general_train"], pirate, 10, seed=4) != picked
    assert select_prompts(["constitution"], pirate, None, seed=0) == pirate.questions


def test_first_question_strips_list_markers_and_quotes():
    assert first_question('\n  1. "How do I tie a bowline?"\nMore text') == "How do I tie a bowline?"
    assert first_question("- What is rust?") == "What is rust?"
    assert first_question("  \n ") == ""


def test_generated_prompts_drop_near_duplicates_of_seeds_and_each_other(tmp_path, pirate):
    def reply(text):
        return {"text": text, "n_tokens": 9, "finished": True, "format_break": False}

    seeds = ["How do I boil an egg so the yolk stays runny?", "What is the capital of France?"]
    raw = [
        {"item": 0, "reply": reply("How do I boil an egg so the yolk stays runny")},  # a seed, reworded
        {"item": 1, "reply": reply("1. Why do cats purr?")},
        {"item": 2, "reply": reply("Why do cats purr??")},  # repeats item 1
        {"item": 3, "reply": reply("How can I learn to juggle three balls?")},
    ]
    ctx = StageContext(pirate, FilterSettings(), 0, 4, tmp_path, {"name": "hf", "batch_size": 4})
    out = GeneratedPromptsStage(ctx, [None], seeds, 4, 0.6).assemble(raw)
    assert [r["prompt"] for r in out.rows] == ["Why do cats purr?", "How can I learn to juggle three balls?"]
    assert out.counts["dropped"] == {"near_duplicate": 2}


def test_pairs_train_on_selected_plus_generated_prompts(tmp_path):
    cfg = tiny_cfg(tmp_path, "pairs", "data.generate.prompts.num=4", "data.generate.prompts.generated=4")
    dataset = generate_dataset(cfg)
    prompts_card = json.loads(next((tmp_path / "cache" / "prompts").glob("*/card.json")).read_text())
    kept = prompts_card["stages"]["prompts"]["kept"]
    assert prompts_card["stages"]["prompts"]["generated"] == 4
    assert dataset.card["rows"] == 4 + kept
