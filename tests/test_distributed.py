"""DDP over 2 CPU processes (gloo) gives the loss curve and weights of 1 process with the same global batch."""

import csv
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO

COMMAND = [
    sys.executable,
    str(REPO / "train.py"),
    "method=sft",
    "model=tiny",
    "trainer.max_steps=4",
    "logger=csv",
    "val.every_n_steps=0",
    "data.batch_size=4",
]


def _train(run_dir, *extra):
    proc = subprocess.run(
        [*COMMAND, f"hydra.run.dir={run_dir}", *extra],
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "csv" / "metrics.csv") as fh:
        losses = [float(row["train/loss"]) for row in csv.DictReader(fh) if row.get("train/loss")]
    return losses, load_file(run_dir / "final" / "model.safetensors")


@pytest.mark.slow  # ~60 s: two training processes plus one (make test-slow)
def test_ddp_two_processes_match_one_process(tmp_path):
    single_loss, single = _train(tmp_path / "single")
    ddp_loss, ddp = _train(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert len(single_loss) == len(ddp_loss) == 4
    for a, b in zip(single_loss, ddp_loss):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert single.keys() == ddp.keys()
    for name in single:
        assert (single[name] - ddp[name]).abs().max() <= 1e-5, name
