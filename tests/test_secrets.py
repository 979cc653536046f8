"""No secret written: a credential on the command line is refused before Hydra records argv anywhere (.hydra/,
summary.json, W&B, sweep directory names); redaction of logged config is in test_loggers.py."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

SK = "sk-" + "Zq7" * 12  # shaped like an OpenAI key
PW = "hunter2pw"


@pytest.mark.parametrize(
    "script,args,named",
    [
        ("train.py", ["model=tiny", f"+eval.llm_judge.api_key={SK}"], "eval.llm_judge.api_key=... names a credential"),
        ("train.py", ["-m", "model=tiny", f"+eval.llm_judge.api_key={SK},{SK}x"], "eval.llm_judge.api_key=..."),
        ("eval.py", ["model=tiny", f"llm_judge.base_url=https://me:{PW}@judge.example.com/v1"], "llm_judge.base_url"),
        ("generate.py", ["model=tiny", f"+hf_token={SK}"], "hf_token=... names a credential"),
    ],
)
def test_a_secret_on_the_command_line_is_one_error_line_and_nothing_is_written(tmp_path, script, args, named):
    out = tmp_path / "out"
    cmd = [sys.executable, script, *args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"charlit: error: {named}"), proc.stderr[-2000:]
    assert "environment variable" in proc.stderr.splitlines()[0] and "Traceback" not in proc.stderr
    assert SK not in proc.stdout + proc.stderr and PW not in proc.stderr and not out.exists()
