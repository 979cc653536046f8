"""Killing a run with SIGKILL and rerunning the same command resumes it to the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO

COMMAND = [
    sys.executable,
    str(REPO / "train.py"),
    "model=tiny",
    "trainer.max_steps=12",
    "output.checkpoint_every_n_steps=3",
    "logger=csv",
    "val.every_n_steps=0",
]


def _run(cwd, method, *extra):
    proc = subprocess.run(
        [*COMMAND, f"method={method}", *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final_weights(cwd, method):
    (final,) = (cwd / "outputs" / method).glob("*/final/model.safetensors")
    return load_file(final)


@pytest.mark.parametrize("method", ["sft", "self_distill"])
def test_kill_9_then_rerun_resumes_to_the_uninterrupted_result(tmp_path, method):
    # self_distill runs with LoRA: its checkpoints hold only the adapter (the frozen base is reloaded)
    extra = ["sampler.max_new_tokens=8", "data.batch_size=4", "model.lora.r=4"] if method == "self_distill" else []
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    clean.mkdir()

    proc = subprocess.Popen(
        [*COMMAND, f"method={method}", *extra],
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 300
    while not list(killed.glob(f"outputs/{method}/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = killed.glob(f"outputs/{method}/*")
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    time.sleep(1.1)  # the rerun gets its own timestamped run dir

    if method == "self_distill":
        saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert saved and all("lora_" in name for name in saved)
    rerun = _run(killed, method, *extra)
    assert f"resuming {run_dir}" in rerun.stdout
    assert (run_dir / "summary.json").is_file() and not list(killed.glob(f"outputs/{method}/*/final/*.tmp*"))

    _run(clean, method, *extra)
    resumed, reference = _final_weights(killed, method), _final_weights(clean, method)
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert (resumed[name] - reference[name]).abs().max() <= 1e-6, name


def test_resume_from_a_missing_checkpoint_is_one_line(tmp_path):
    bad = subprocess.run(
        [*COMMAND, "method=sft", f"resume={tmp_path}/nowhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and f"resume={tmp_path}/nowhere: no checkpoint at" in bad.stderr


def test_rerunning_a_sweep_reuses_its_finished_jobs(tmp_path):
    sweep = [
        *COMMAND[:2],
        "-m",
        "method=sft",
        "model=tiny",
        "trainer.max_steps=2",
        "logger=csv",
        "val.every_n_steps=0",
        "seed=0,1",
    ]
    first = subprocess.run(
        [*sweep, f"hydra.sweep.dir={tmp_path}/a"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(
        [*sweep, f"hydra.sweep.dir={tmp_path}/b"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished in") == 2
    assert not list((tmp_path / "b").glob("*/checkpoints")) and len(list((tmp_path / "b").glob("*/summary.json"))) == 2
    assert (tmp_path / "b" / "report.csv").is_file()
