"""``benchmarks/bench_trl_step.py``: its workers time this checkout's charlit, not whichever one is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_trl_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_trl_step", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_worker_imports_the_checkouts_charlit(monkeypatch, tmp_path):
    user = tmp_path / "user"  # a charlit planted on the user's PYTHONPATH, which precedes site-packages
    (user / "charlit").mkdir(parents=True)
    (user / "charlit" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(user))
    env = _bench().worker_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), str(user)] and env["WANDB_MODE"] == "disabled"
    # run as the workers are, a script whose own directory holds no charlit: the checkout's wins
    probe = tmp_path / "scripts" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("import charlit; print(charlit.__file__)")
    out = subprocess.run([sys.executable, str(probe)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert Path(out.stdout.strip()).resolve() == ROOT / "charlit" / "__init__.py", out.stderr
