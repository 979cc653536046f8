"""One data module per data kind, registered and built from typed settings; held-out prompts screened the same way
for every kind; one message validator for every data file."""

import json

import pytest

from charlit.data.io import load_conversations
from charlit.data.modules import DATA_MODULES, build_datamodule
from charlit.data.modules.base import collate_tokens
from charlit.data.prompts import load_prompt_set
from tests.conftest import compose


def _conversations(tmp_path, *convs):
    path = tmp_path / "conversations.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


def test_every_kind_is_a_registered_data_module():
    assert DATA_MODULES.builtin_names() == ["conversations", "pairs", "prompts"]
    with pytest.raises(ValueError, match="data.kind='nope' is not a registered data kind; valid choices: conv"):
        DATA_MODULES.get("nope")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.batch_size=0"], r"data.batch_size=0 is out of range; it must be > 0"),
        (["data.val_size=-1"], r"data.val_size=-1 is out of range; it must be >= 0"),
        (["+data.max_length=64"], r"data.max_length is not a setting of data=prompts; valid settings: batch_size"),
        (["method=sft", "data.max_length=0"], r"data.max_length=0 is out of range; it must be > 0"),
        (["method=sft", "data.val_batch_size=two"], r"data.val_batch_size='two' must be an integer"),
    ],
)
def test_data_settings_are_checked_with_the_key_and_the_allowed_range(pirate, tokenizer, overrides, message):
    cfg = compose(overrides)
    with pytest.raises(ValueError, match=message):
        build_datamodule(cfg.data, pirate, tokenizer, ("prompts", "conversations"))


def test_the_objective_kind_is_checked_first(pirate, tokenizer):
    with pytest.raises(ValueError, match=r"method=dpo trains on pairs but data=prompts provides prompts; .*data=pairs"):
        build_datamodule(compose([]).data, pirate, tokenizer, "pairs", method="dpo")


@pytest.mark.parametrize("conversation_format", ["tokens", "all_turns", "last_turn"])
def test_conversation_heldout_prompts_exclude_training_prompts(tmp_path, pirate, tokenizer, conversation_format):
    heldout = load_prompt_set("general_heldout")
    path = _conversations(
        tmp_path,
        [{"role": "user", "content": heldout[0]}, {"role": "assistant", "content": "Arr."}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Ahoy."},
            {"role": "user", "content": heldout[1].upper()},
            {"role": "assistant", "content": "Aye."},
        ],
    )
    cfg = compose(["method=sft", f"data.path={path}", "data.val_size=4"])
    module = build_datamodule(cfg.data, pirate, tokenizer, "conversations", conversation_format=conversation_format)
    assert module.heldout == [p for p in heldout if p not in heldout[:2]][:4]


def test_token_batches_are_right_padded_with_masked_labels(tmp_path, pirate, tokenizer):
    batch = collate_tokens([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=0)
    assert {k: v.tolist() for k, v in batch.items()} == {
        "input_ids": [[1, 2, 3], [4, 0, 0]],
        "attention_mask": [[1, 1, 1], [1, 0, 0]],
        "labels": [[-100, 2, 3], [4, -100, -100]],
    }
    cfg = compose(["method=sft", "data.batch_size=2"])
    batch = next(iter(build_datamodule(cfg.data, pirate, tokenizer, "conversations").train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == -100)).all()


def test_prompt_data_refuses_a_generated_dataset(pirate, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"data=prompts is of kind prompts, .*remove its data.generate block"):
        build_datamodule(compose([]).data, pirate, tokenizer, "prompts", dataset_path=tmp_path / "data.jsonl")


@pytest.mark.parametrize(
    "message", [{"role": "user", "content": "  "}, {"role": "narrator", "content": "x"}, {"role": "user"}, "hi"]
)
def test_one_message_validator_names_file_row_and_message(tmp_path, message):
    path = _conversations(
        tmp_path,
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [message, {"role": "assistant", "content": "a"}],
    )
    with pytest.raises(ValueError, match=r"row 2: 'messages' has a message without a valid role .* non-empty") as err:
        load_conversations(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_teacher_replies_are_one_side_of_the_pairs_as_conversations(tmp_path, pirate, tokenizer, side):
    """data=teacher_replies reads pair rows; every example is the pair's prompt with that side's reply as response."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"Arr, answer {i}."}],
            "rejected": [{"role": "assistant", "content": f"Answer {i}."}],
        }
        for i in range(3)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(["method=distill", "data=teacher_replies", f"data.path={path}", f"data.from_pairs={side}"])
    module = build_datamodule(cfg.data, pirate, tokenizer, "conversations", conversation_format="all_turns")
    got = [(e["prompt"], tokenizer.decode(e["response_ids"])) for e in module.items]
    assert [p for p, _ in got] == [r["prompt"] for r in rows]
    assert all(r[side][0]["content"] in text for r, (_, text) in zip(rows, got))
    with pytest.raises(ValueError, match=r"data.from_pairs='both'"):
        build_datamodule(
            compose(["method=distill", "data=teacher_replies", "data.from_pairs=both"]).data,
            pirate,
            tokenizer,
            "conversations",
        )
