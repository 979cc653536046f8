"""teacher=cached: a cache built by generate.py data=teacher_cache, training from it with no teacher network."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from charlit.data.pipeline.teacher_cache import build_teacher_cache
from charlit.run import train
from charlit.teachers.topk_cache import example_key, read_cache, write_shard
from tests.conftest import REPO, compose

CONVERSATIONS = [
    [{"role": "user", "content": "What do you do on a Sunday?"}, {"role": "assistant", "content": "I mend sails."}],
    [
        {"role": "user", "content": "Any advice for a storm?"},
        {"role": "assistant", "content": "Reef early, lash the cargo, and trust the crew you chose."},
        {"role": "user", "content": "And after it?"},
        {"role": "assistant", "content": "Count the crew, then the rum."},
    ],
]
TINY = ["model=tiny", "logger=csv"]
FAST = [*TINY, "trainer.max_steps=1", "val.every_n_steps=0", "data.val_size=2", "data.batch_size=3"]


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pirate.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher with its own weights, saved to disk (so a test can delete it)."""
    from charlit.models import load_model

    loaded = load_model(OmegaConf.create({"name_or_path": "tiny", "seed": 7}), apply_lora=False)
    out = tmp_path_factory.mktemp("teacher") / "model"
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def _build(tmp_path, conversations, teacher, k):
    cfg = compose(
        [
            "data=teacher_cache",
            "data@data.source=conversations",
            f"data.source.path={conversations}",
            f"data.k={k}",
            "data.shard_examples=2",
            f"generation.cache_dir={tmp_path / 'cache'}",
            *teacher,
            *TINY,
        ]
    )
    return build_teacher_cache(cfg)


def _train(run_dir, conversations, teacher, beta=0.0):
    cfg = compose(
        ["method=distill", f"method.beta={beta}", "data=conversations", f"data.path={conversations}", *teacher, *FAST]
    )
    return train(cfg, run_dir)["metrics"]["train/loss"]


@pytest.mark.slow  # ~20 s: generate.py three times in subprocesses (make test-slow)
def test_generate_builds_a_card_and_resumable_shards_and_reuses_a_complete_cache(tmp_path, conversations, teacher_dir):
    teacher = ["teacher=external", f"teacher.name_or_path={teacher_dir}"]
    cmd = [
        sys.executable,
        "generate.py",
        "data=teacher_cache",
        "data@data.source=conversations",
        f"data.source.path={conversations}",
        "data.k=16",
        "data.shard_examples=2",
        f"generation.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *teacher,
        *TINY,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache_dir = tmp_path / "cache" / "teacher_cache"
    (built,) = cache_dir.iterdir()
    assert str(built) in proc.stdout.splitlines()
    card = json.loads((built / "card.json").read_text())
    assert (card["examples"], card["shards"], card["k"]) == (3, 2, 16)  # 3 assistant turns, 2 per shard
    assert 0 < card["mass_covered"]["min"] <= card["mass_covered"]["mean"] <= 1
    assert "teacher=cached teacher.path=" in (built / "card.md").read_text()
    # resumable: a lost second shard is scored again, the first is read back; a complete cache is reused
    (built / "COMPLETE").unlink()
    (built / "shards" / "00001.json").unlink()
    first = (built / "shards" / "00000.safetensors").stat().st_mtime_ns
    again = _build(tmp_path, conversations, teacher, 16)
    assert again == built and (built / "COMPLETE").is_file()
    assert (built / "shards" / "00000.safetensors").stat().st_mtime_ns == first
    assert json.loads((built / "card.json").read_text())["tokens"] == card["tokens"]


def test_with_k_equal_to_the_vocabulary_the_cached_loss_is_the_live_teachers(tmp_path, conversations, teacher_dir):
    teacher = ["teacher=external", f"teacher.name_or_path={teacher_dir}"]
    live = _train(tmp_path / "live", conversations, teacher)
    vocab = 49152  # the tiny model's (SmolLM2 tokenizer)
    cache_full = _build(tmp_path, conversations, teacher, vocab)
    cache_16 = _build(tmp_path, conversations, teacher, 16)
    full = _train(tmp_path / "full", conversations, ["teacher=cached", f"teacher.path={cache_full}"])
    top16 = _train(tmp_path / "top16", conversations, ["teacher=cached", f"teacher.path={cache_16}"])
    assert full == pytest.approx(live, rel=1e-4)
    assert top16 <= full + 1e-6  # the divergence on k+1 buckets is a lower bound (data-processing inequality)


def test_training_from_the_cache_never_needs_the_teacher(tmp_path, conversations, teacher_dir):
    moved = tmp_path / "teacher"
    shutil.copytree(teacher_dir, moved)
    cache = _build(tmp_path, conversations, ["teacher=external", f"teacher.name_or_path={moved}"], 16)
    shutil.rmtree(moved)  # the teacher is gone: only the cache is left
    loss = _train(tmp_path / "run", conversations, ["teacher=cached", f"teacher.path={cache}"])
    assert torch.isfinite(torch.tensor(loss))


def test_on_policy_samples_are_refused_with_what_to_do(tmp_path, conversations, teacher_dir):
    cache = _build(tmp_path, conversations, ["teacher=external", f"teacher.name_or_path={teacher_dir}"], 16)
    cfg = compose(["method=self_distill", "teacher=cached", f"teacher.path={cache}", "sampler.max_new_tokens=4", *FAST])
    with pytest.raises(ValueError, match="only scores the responses it was built on"):
        train(cfg, tmp_path / "run")


def test_bad_caches_get_one_line_errors(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="not a finished teacher cache"):
        read_cache(tmp_path, tokenizer, 49152)
    rows = {"ids": torch.tensor([[1, 2]]), "logprobs": torch.tensor([[-0.1, -3.0]]), "tail": torch.tensor([-4.0])}
    write_shard(tmp_path, 0, [example_key("hi", [5])], [rows])
    card = {"format_version": 1, "tokenizer": "not-this-one", "student": "other", "k": 2, "shards": 1}
    (tmp_path / "card.json").write_text(json.dumps(card))
    (tmp_path / "COMPLETE").write_text("{}")
    with pytest.raises(ValueError, match="built for a student tokenizer"):
        read_cache(tmp_path, tokenizer, 49152)
    from charlit.teachers.topk_cache import tokenizer_fingerprint

    card["tokenizer"] = tokenizer_fingerprint(tokenizer)
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert read_cache(tmp_path, tokenizer, 49152).where == {example_key("hi", [5]): (0, 1)}
    with pytest.raises(ValueError, match=r"token ids outside \[0, 2\)"):
        read_cache(tmp_path, tokenizer, 2)


def test_the_cached_teacher_needs_a_path_and_is_not_a_cache_source(tmp_path):
    with pytest.raises(ValueError, match="teacher.path=<cache dir>"):
        train(compose(["method=distill", "teacher=cached", "data.path=bundled", *FAST]), tmp_path / "a")
    with pytest.raises(ValueError, match="teacher=cached only reads a cache"):
        build_teacher_cache(compose(["data=teacher_cache", "teacher=cached", *TINY]))
    with pytest.raises(ValueError, match="built by generate.py, not trained on"):
        train(compose(["method=distill", "data=teacher_cache", *TINY]), tmp_path / "b")
