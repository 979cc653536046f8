"""Tiny two-step runs of every new method and teacher: summary.json and a loadable final/ checkpoint.

One run goes through ``train.py`` as a subprocess (the documented command); the rest call
``charlit.run.train`` in-process on the same composed config to keep the suite fast.
"""

import json
import subprocess
import sys

import pytest
import torch

from charlit.run import train
from tests.conftest import REPO, compose

FAST = [
    "model=tiny",
    "trainer.max_steps=2",
    "logger=csv",
    "sampler.max_new_tokens=6",
    "data.val_size=2",
    "data.batch_size=2",
]


def _check(run_dir, method, teacher="self"):
    from transformers import AutoModelForCausalLM

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method and summary["teacher"] == teacher and summary["steps"] == 2
    for key in ("train/loss", "train/grad_norm", "train/tokens_per_s"):
        assert key in summary["metrics"], key
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    return summary


@pytest.mark.slow  # a DPO run with validation, ~20 s (DPO's loss is tested in tests/objectives): `make test-slow`
def test_dpo_cli_run_with_validation(tmp_path):
    cmd = [sys.executable, "train.py", "method=dpo", "data.path=bundled", *FAST, f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _check(tmp_path, "dpo")["metrics"]
    for key in (
        "train/rewards/chosen",
        "train/rewards/rejected",
        "train/rewards/margins",
        "train/rewards/accuracy",
        "val/divergence_start",
        "val/persona_gain_end",
    ):
        assert key in metrics, key


@pytest.mark.parametrize(
    "overrides, method, teacher, metric",
    [
        (["method=distill", "method.ce_coef=0.1"], "distill", "self", "train/ce"),
        (["method=on_policy_distill", "method.lmbda=0.5"], "on_policy_distill", "self", "train/on_policy"),
        (
            ["method=on_policy_distill", "data=prompts", "method.lmbda=1", "method.estimator=sampled_token"],
            "on_policy_distill",
            "self",
            "train/kl_estimate",
        ),
        (["method=self_distill", "method.teacher_weights=ema"], "self_distill", "self", "train/divergence"),
        (["method=self_distill", "teacher=fewshot"], "self_distill", "fewshot", "train/divergence"),
        (
            ["method=self_distill", "teacher=amplified", "teacher.alpha=0.5"],
            "self_distill",
            "amplified",
            "train/divergence",
        ),
        (
            ["method=distill", "teacher=external", "teacher.name_or_path=tiny", "teacher.seed=1"],
            "distill",
            "external",
            "train/divergence",
        ),
    ],
)
def test_tiny_runs_of_methods_and_teachers(tmp_path, overrides, method, teacher, metric):
    cfg = compose([*overrides, *FAST, "val.every_n_steps=0"])
    train(cfg, tmp_path)
    summary = _check(tmp_path, method, teacher)
    assert metric in summary["metrics"]


def test_a_bf16_mixed_run_trains_after_validating(tmp_path):
    """bf16-mixed on the CPU with validation between steps: what validation makes under ``inference_mode`` (bf16
    copies of frozen weights, the decoding copy) must serve the next training step's autograd."""
    cfg = compose(
        ["method=self_distill", *FAST, "model.lora.r=4", "trainer.precision=bf16-mixed", "val.every_n_steps=1"]
    )
    train(cfg, tmp_path)
    summary = _check(tmp_path, "self_distill")
    assert len(summary["val_history"]) >= 2 and torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))
