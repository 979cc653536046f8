"""The method ablation's cluster study (`experiment=method_ablation_cluster`): it composes as documented, and its
exact sweep runs end to end on the tiny model here, with only the hardware-bound settings swapped."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, compose

CLUSTER = ["-m", "experiment=method_ablation_cluster", "hydra.launcher.partition=gpu"]
ARMS = ["oct", "dpo", "distill", "on_policy_distill", "self_distill", "self_distill_ema"]
# what a machine without GPUs, SLURM or vLLM has to change; the arms, personas, seeds and eval stay as they are
LOCAL = [
    "model=tiny",
    "hydra/launcher=basic",
    "trainer=default",
    "trainer.devices=1",
    "sampler@generation.sampler=hf",
    "trainer.max_steps=1",
    "trainer.precision=32-true",
    "logger=csv",
    "sampler.max_new_tokens=4",
    "generation.max_new_tokens=8",
    "data.val_size=2",
    "eval.judges=[likelihood]",
    *(f"eval.suite.{k}=2" for k in ("id_prompts", "ood_prompts", "conversations", "turns", "attacks", "prefill")),
    *(f"eval.suite.{k}=1" for k in ("pressure", "buried")),
    *(f"eval.suite.{k}=2" for k in ("neutral_prompts", "neutral_paragraphs", "format_shift_prompts")),
    "eval.suite.attack_prompts=1",
    "eval.suite.multiple_choice=4",
    "eval.suite.max_new_tokens=4",
]


def test_cluster_study_composes_with_cfg_job():
    proc = subprocess.run(
        [sys.executable, "train.py", *CLUSTER[1:], "--cfg", "hydra"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hydra = proc.stdout
    assert "SlurmLauncher" in hydra and "partition: gpu" in hydra and "gpus_per_node: 8" in hydra
    assert f"+arm: {','.join(ARMS)}" in hydra and "persona: pirate,stoic" in hydra and "seed: 0,1" in hydra
    job = subprocess.run(
        [sys.executable, "train.py", "experiment=method_ablation_cluster", "+arm=self_distill", "--cfg", "job"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    for line in ("name_or_path: Qwen/Qwen2.5-7B-Instruct", "precision: bf16-mixed", "strategy: ddp", "name: vllm"):
        assert line in job.stdout, line
    assert "name: hf" in job.stdout  # on-policy samples come from the weights being trained
    for arm in ARMS:  # every arm's global batch splits over the 8 ranks (DDP refuses it otherwise)
        cfg = compose(["experiment=method_ablation_cluster", f"+arm={arm}"])
        assert cfg.data.batch_size % cfg.trainer.devices == 0 and cfg.trainer.devices == 8, arm


@pytest.mark.slow
def test_cluster_study_runs_its_exact_sweep_on_the_tiny_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", *CLUSTER[:2], *LOCAL, f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == len(ARMS) * 2 * 2
    for job in jobs:  # a plain job writes summary.json; OCT's recipe, recipe.json over its two stages' summaries
        done = job / ("recipe.json" if "+arm=oct," in job.name else "summary.json")
        assert json.loads(done.read_text()), job.name
    assert (tmp_path / "report.md").is_file()
