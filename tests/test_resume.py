"""Killing a run with SIGKILL and rerunning the same command resumes it to the weights of an uninterrupted run,
with every logged row and validation; a run never resumes (or shares) a dir another run owns."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
import torch
import yaml
from safetensors.torch import load_file

from charlit.checkpointing import LAST_CHECKPOINT, ValHistoryFile, run_fingerprint, write_json
from charlit.run import resolve_run_dir
from tests.conftest import REPO, compose

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


@pytest.mark.slow  # ~65 s per method: a run killed with SIGKILL, resumed, and an uninterrupted one (make test-slow)
@pytest.mark.parametrize("method", ["sft", "self_distill"])
def test_kill_9_then_rerun_resumes_to_the_uninterrupted_result(tmp_path, method):
    """self_distill (teacher state, on-policy sampling) and sft."""
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

    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    if method == "self_distill":
        assert saved["state_dict"] and all("lora_" in name for name in saved["state_dict"])
    orphan = run_dir / "checkpoints" / ".last.ckpt.tmp-4242424"  # what a kill while checkpointing leaves
    orphan.write_bytes(b"half a checkpoint")
    rerun = _run(killed, method, *extra)
    assert f"resuming {run_dir}" in rerun.stdout
    assert (run_dir / "summary.json").is_file() and not list(killed.glob(f"outputs/{method}/*/final/*.tmp*"))
    assert not orphan.exists()
    # every step's row once: the rows logged before the checkpoint survive the resume (the row of the step that
    # ends at the checkpoint is logged just after saving it, so a kill right then can miss that one)
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh) if row["train/loss"]]
    assert len(steps) == len(set(steps)) and set(range(12)) - set(steps) <= {saved["global_step"] - 1}, steps

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


@pytest.mark.slow  # ~30 s: two tiny two-job sweeps (make test-slow)
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


def _fresh(cfg, run_dir):
    """Start a run in ``run_dir`` as train() does; returns the lock its process holds."""
    got_dir, resume, lock = resolve_run_dir(cfg, run_dir, reuse_finished=False)
    assert got_dir == run_dir and resume is None
    return lock


def _checkpointed(run_dir):
    (run_dir / LAST_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / LAST_CHECKPOINT).write_bytes(b"a checkpoint")


def test_a_run_with_another_token_setting_does_not_resume_a_killed_run(tmp_path):
    # the redaction of logged configs hides keys that match "token": the fingerprint must not
    killed = tmp_path / "outputs" / "sft" / "a"
    _fresh(compose(["method=sft", "model=tiny", "sampler.max_new_tokens=48"]), killed).release()
    _checkpointed(killed)
    _, resume, lock = resolve_run_dir(
        compose(["method=sft", "model=tiny", "sampler.max_new_tokens=8"]), tmp_path / "outputs" / "sft" / "b", False
    )
    lock.release()
    assert resume is None


def test_secret_values_change_the_fingerprint_without_being_stored():
    from omegaconf import OmegaConf

    a, b = (OmegaConf.create({"logger": {"api_key": key, "name": "csv"}}) for key in ("hunter2", "hunter3"))
    assert run_fingerprint(a) != run_fingerprint(b) and run_fingerprint(a) == run_fingerprint(a.copy())


def test_a_dir_another_process_trains_in_is_neither_resumed_nor_shared(tmp_path, capsys):
    cfg = compose(["method=sft", "model=tiny"])
    outputs = tmp_path / "outputs" / "sft"
    first = _fresh(cfg, outputs / "a")  # still training (its process holds the lock)
    _checkpointed(outputs / "a")
    second = _fresh(cfg, outputs / "b")  # an identical rerun meanwhile starts fresh, and says so
    assert f"not resuming {outputs / 'a'}: another process is training in it" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"run dir .*/a is in use by another charlit process .* hydra.run.dir"):
        resolve_run_dir(compose(["method=sft", "model=tiny", "persona=stoic"]), outputs / "a", False)
    first.release()  # the first run was killed: the next rerun resumes it, and only that one
    _, resume, third = resolve_run_dir(cfg, outputs / "c", False)
    assert resume.run_dir == outputs / "a"
    _, resume, fourth = resolve_run_dir(cfg, outputs / "d", False)
    assert resume is None
    for lock in (second, third, fourth):
        lock.release()


def test_a_truncated_summary_counts_as_unfinished(tmp_path):
    cfg = compose(["method=sft", "model=tiny"])
    for sweep in ("m1", "m2"):  # a sweep job: a finished one in an earlier sweep would be reused
        _fresh(cfg, tmp_path / sweep / "0_job").release()
    killed = tmp_path / "m1" / "0_job"
    _checkpointed(killed)
    (killed / "summary.json").write_text('{"method": "sf')  # killed while writing it
    _, resume, lock = resolve_run_dir(cfg, tmp_path / "m2" / "0_job", reuse_finished=True)
    lock.release()
    assert resume.run_dir == killed and resume.checkpoint == killed / LAST_CHECKPOINT


def test_a_kill_while_writing_a_summary_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"steps": 1})

    def killed(fd):
        raise SystemExit("killed")

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(SystemExit):
        write_json(path, {"steps": 2, "metrics": {"x": 1.0}})
    assert json.loads(path.read_text()) == {"steps": 1}


def test_a_resumed_run_keeps_the_validation_that_ran_after_its_checkpoint(tmp_path):
    # a checkpoint is saved before the validation of its step: a resumed run takes that row back from the file
    rows = [{"step": 0, "val/divergence": 0.1}, {"step": 4, "val/divergence": 0.2}, {"step": 6, "val/x": 0.3}]
    write_json(tmp_path / "val_history.json", rows)
    trainer = type("Trainer", (), {"is_global_zero": True, "sanity_checking": False})()
    objective = type("Objective", (), {"val_history": rows[:1]})()  # as restored from the step-4 checkpoint
    ValHistoryFile(tmp_path, resumed_step=4).on_train_start(trainer, objective)
    assert objective.val_history == rows[:2]
    assert json.loads((tmp_path / "val_history.json").read_text()) == rows[:2]


@pytest.mark.slow
def test_resuming_after_a_checkpoint_and_validation_of_the_same_step_keeps_both(tmp_path):
    """End to end: run 2 steps (checkpoint, then validation, at step 2), lose the end as a kill would, resume to 4."""
    run = [
        *COMMAND[:2],
        "method=sft",
        "model=tiny",
        "logger=csv",
        "val.every_n_steps=2",
        "output.checkpoint_every_n_steps=2",
        "data.val_size=4",
        "sampler.max_new_tokens=8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*run, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/a"], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "a" / "summary.json").unlink()
    rerun = [*run, "trainer.max_steps=4", f"resume={tmp_path}/a", f"hydra.run.dir={tmp_path}/b"]
    second = subprocess.run(rerun, env=env, capture_output=True)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [row["step"] for row in summary["val_history"]] == [0, 2, 4]
    with open(tmp_path / "a" / "csv" / "metrics.csv", newline="") as fh:
        assert [int(row["step"]) for row in csv.DictReader(fh) if row["train/loss"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("config", ["train.yaml", "generate.yaml", "eval_main.yaml"])
def test_runs_started_in_the_same_second_get_their_own_dirs(config):
    hydra = yaml.safe_load((REPO / "conf" / config).read_text())["hydra"]
    for where in ("run", "sweep"):
        if where in hydra:
            (pattern,) = re.findall(r"\$\{now:([^}]*)\}", hydra[where]["dir"])
            one, other = (datetime(2025, 1, 1, 12, 0, 0, micros).strftime(pattern) for micros in (1000, 2000))
            assert one != other, f"{config}: hydra.{where}.dir {hydra[where]['dir']}"
