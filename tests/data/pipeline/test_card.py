"""The dataset card in Markdown and in a real (offline) W&B run."""

from charlit.data.pipeline.card import build_card, card_markdown, log_card_to_wandb

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(4)
]


def _card():
    return build_card(
        "reflection",
        "abc",
        "/x/data.jsonl",
        ROWS,
        {
            "reflection": {
                "generated": 6,
                "kept": 4,
                "trimmed": 2,
                "cut_at_loop": 1,
                "dropped": {"unfinished": 1, "format_break": 1},
            }
        },
        [10, 20, 30, 40],
        new_tokens=200,
        seconds=4.0,
        settings={"seed": 0},
    )


def test_card_contents_and_markdown():
    card = _card()
    assert card["rows"] == 4 and card["samples"] == ROWS[:3]
    assert card["generation"]["tokens_per_s"] == 50.0
    assert card["reply_tokens"]["mean"] == 25.0 and sum(card["reply_tokens"]["histogram"]["counts"]) == 4
    md = card_markdown(card)
    assert "| reflection | 6 | 4 | 2 | 1 | unfinished: 1, format_break: 1 |" in md
    assert "200 new tokens in 4.0 s (50.0 tokens/s)" in md and md.count("### Sample") == 3


def test_card_is_logged_to_an_offline_wandb_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="charlit-test", dir=str(tmp_path), mode="offline")
    try:
        log_card_to_wandb(_card(), run)
        assert run.summary["data/reflection/rows"] == 4
        assert (
            run.summary["data/reflection/kept"] == 4
            and run.summary["data/reflection/trimmed"] == 2
            and run.summary["data/reflection/dropped/unfinished"] == 1
        )
        assert run.summary["data/reflection/tokens_per_s"] == 50.0
    finally:
        wandb.finish()
