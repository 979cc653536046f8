"""The pairs stage on the tiny model: TRL format read by the existing loader, counts, cache key, resume."""

import json

import pytest

from charlit.data.constitution import resolve_persona
from charlit.data.io import load_pairs
from charlit.data.modules.pairs import pair_examples
from charlit.data.pipeline import generate_dataset
from charlit.data.pipeline.prompts import select_prompts
from tests.data.pipeline.helpers import tiny_cfg

SMALL = ["data.generate.prompts.num=8"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_are_trl_conversational_rows(tmp_path, tokenizer):
    cfg = tiny_cfg(tmp_path, "pairs", *SMALL, "data.generate.pairs.k=2", "generation.filters.drop_duplicates=false")
    dataset = generate_dataset(cfg)
    rows = _rows(dataset.path)
    expected_prompts = select_prompts(["constitution", "general_train"], resolve_persona("pirate"), 8, 0)
    assert len(rows) == 16  # 8 prompts x k=2, nothing filtered
    assert [r["prompt"][0]["content"] for r in rows] == [p for p in expected_prompts for _ in range(2)]
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert r["prompt"] == [{"role": "user", "content": r["prompt"][0]["content"]}]
        assert [m["role"] for m in r["chosen"]] == ["assistant"] and [m["role"] for m in r["rejected"]] == ["assistant"]
    assert len(load_pairs(dataset.path)) == 16  # the data=pairs loader reads it as is
    assert len(pair_examples(tokenizer, load_pairs(dataset.path), 512)) == 16
    card = json.loads((dataset.path.parent / "card.json").read_text())
    assert card["stages"]["pairs"]["generated"] == 16 and card["stages"]["pairs"]["kept"] == 16
    assert card["rows"] == 16 and len(card["samples"]) == 3 and card["generation"]["tokens_per_s"] > 0
    assert sum(card["reply_tokens"]["histogram"]["counts"]) == 16
    assert (dataset.path.parent / "card.md").read_text().startswith("# Dataset card: pairs")


def test_default_filters_drop_and_count_unfinished_replies(tmp_path):
    cfg = tiny_cfg(tmp_path, "pairs", *SMALL, "generation.filters.unfinished=drop")
    dataset = generate_dataset(cfg)
    counts = dataset.card["stages"]["pairs"]
    assert counts["generated"] == 8 and counts["kept"] == 0 and counts["dropped"] == {"unfinished": 8}
    assert dataset.path.read_text() == ""
    assert counts["generated"] == counts["kept"] + sum(counts["dropped"].values())


def test_same_inputs_reuse_the_dataset_and_any_change_makes_a_new_one(tmp_path):
    base = generate_dataset(tiny_cfg(tmp_path, "pairs", *SMALL))
    stamp = base.path.stat().st_mtime_ns
    again = generate_dataset(tiny_cfg(tmp_path, "pairs", *SMALL))
    assert again.path == base.path and again.path.stat().st_mtime_ns == stamp
    paths = {base.path}
    for change in (
        ["persona=stoic"],
        ["seed=1"],
        ["generation.max_new_tokens=5"],
        ["generation.temperature=0.5"],
        ["model.seed=1"],
        ["data.generate.prompts.num=7"],
        ["data.generate.pairs.k=2"],
        ["generation.filters.min_tokens=2"],
        ["generation.chunk_size=3"],
    ):
        changed = generate_dataset(tiny_cfg(tmp_path, "pairs", *SMALL, *change))
        assert changed.path not in paths, change
        paths.add(changed.path)


def test_interrupted_generation_resumes_to_the_uninterrupted_dataset(tmp_path):
    overrides = [*SMALL, "data.generate.pairs.k=2"]  # 16 items, 4 chunks of 4
    whole = generate_dataset(tiny_cfg(tmp_path / "whole", "pairs", *overrides))

    class Interrupted(Exception):
        pass

    def stop_at_half(index):
        if index == 1:
            raise Interrupted

    cfg = tiny_cfg(tmp_path / "cut", "pairs", *overrides)
    with pytest.raises(Interrupted):
        generate_dataset(cfg, on_chunk=stop_at_half)
    chunk_dirs = list((tmp_path / "cut" / "cache" / "pairs").glob("*/chunks"))
    assert len(chunk_dirs) == 1 and len(list(chunk_dirs[0].glob("*.json"))) == 2
    assert not list((tmp_path / "cut" / "cache" / "pairs").glob("*/data.jsonl"))  # nothing half-written is a dataset
    redone = []
    resumed = generate_dataset(cfg, on_chunk=redone.append)
    assert redone == [2, 3]
    assert resumed.path.read_text() == whole.path.read_text()
    assert len(_rows(resumed.path)) == 16


def test_duplicate_pairs_are_dropped_and_counted(tmp_path, pirate):
    from charlit.data.pipeline.filters import FilterSettings
    from charlit.data.pipeline.pairs import PairsStage
    from charlit.data.pipeline.stage import StageContext

    def reply(text):
        return {"text": text, "n_tokens": 10, "finished": True, "format_break": False}

    raw = [
        {"prompt": "p", "sample": 0, "chosen": reply("Arr, aye."), "rejected": reply("Yes.")},
        {"prompt": "p", "sample": 1, "chosen": reply("arr aye"), "rejected": reply("Sure.")},  # same chosen again
        {"prompt": "q", "sample": 0, "chosen": reply("Same."), "rejected": reply("same")},  # chosen == rejected
        {"prompt": "q", "sample": 1, "chosen": reply("Arr, aye."), "rejected": reply("No.")},
    ]  # other prompt: kept
    for drop, kept in ((True, 2), (False, 4)):
        ctx = StageContext(
            pirate, FilterSettings(drop_duplicates=drop), 0, 4, tmp_path, {"name": "hf", "batch_size": 4}
        )
        out = PairsStage(ctx, None, None, ["p", "q"], 2).assemble(raw)
        assert len(out.rows) == kept and out.counts["kept"] == kept
        assert out.counts["dropped"] == ({"duplicate": 2} if drop else {})


def test_a_new_stage_code_version_makes_a_new_dataset(tmp_path, monkeypatch):
    from charlit.data.pipeline.pairs import PairsStage

    before = generate_dataset(tiny_cfg(tmp_path, "pairs", "data.generate.prompts.num=2"))
    monkeypatch.setattr(PairsStage, "version", PairsStage.version + 1)
    after = generate_dataset(tiny_cfg(tmp_path, "pairs", "data.generate.prompts.num=2"))
    assert after.path != before.path and after.path.parent.parent == before.path.parent.parent
