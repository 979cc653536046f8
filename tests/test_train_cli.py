"""End to end: the documented tiny-model commands write summary.json and a loadable final/ checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def _run(tmp_path, *overrides):
    cmd = [
        sys.executable,
        "train.py",
        *overrides,
        "model=tiny",
        "trainer.max_steps=2",
        "logger=csv",
        "sampler.max_new_tokens=8",
        "data.val_size=4",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("method", [pytest.param("sft", marks=pytest.mark.slow), "self_distill"])  # sft: ~20 s
def test_tiny_run_writes_summary_and_hf_checkpoint(tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _run(tmp_path, f"method={method}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    metrics = summary["metrics"]
    for key in (
        "val/divergence_start",
        "val/divergence_end",
        "val/persona_gain_start",
        "val/persona_gain_end",
        "val/persona_gain_bare",
        "val/persona_gain_prompted",
        "train/loss",
        "train/grad_norm",
        "train/tokens_per_s",
    ):
        assert key in metrics, key
    assert summary["peak_rss_mb"] > 0 and summary["wall_time_s"] > 0
    assert summary["config"]["method"]["name"] == method
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    out = model(**tokenizer(ids, return_tensors="pt"))
    assert torch.isfinite(out.logits).all()


def test_lora_run_saves_merged_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    _run(tmp_path, "method=self_distill", "model.lora.r=4", "val.every_n_steps=0")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_bad_persona_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraits:\n  - trait: I am.\n")
    cmd = [sys.executable, "train.py", f"persona={bad}", "model=tiny", "logger=none", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{bad}: trait #1 is missing the field 'questions'" in proc.stderr
    assert "Traceback" not in proc.stderr
