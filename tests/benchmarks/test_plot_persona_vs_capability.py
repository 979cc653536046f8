"""``benchmarks/plot_persona_vs_capability.py``: each run's figures reach the table and the plot; bad input is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plot_persona_vs_capability.py"
_spec = importlib.util.spec_from_file_location("plot_persona_vs_capability", SCRIPT)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _ci(mean):
    return {"model": {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": 8}}


def _run(root: Path, name: str, data: str, seed: int, format_shift: float, kl: float) -> Path:
    run = root / name
    (run / "eval_fs").mkdir(parents=True)
    (run / "summary.json").write_text(
        json.dumps({"persona": "pirate", "data": data, "config": {"seed": seed, "optim": {"lr": 1e-3}}})
    )
    suites = {
        "format_shift": {"metrics": {"likelihood_gated_range": _ci(format_shift)}},
        "capability": {"metrics": {"kl_to_base": _ci(kl), "mc_accuracy": _ci(0.5)}},
    }
    (run / "eval_fs" / "eval.json").write_text(json.dumps({"suites": suites}))
    return run


def test_table_and_plot_carry_each_runs_figures(tmp_path, capsys):
    plain = _run(tmp_path, "plain", "prompts", 1, 0.88, 0.18)
    robust = _run(tmp_path, "robust", "robust", 1, 0.72, 0.13)
    out = tmp_path / "plot.png"
    tool.main([str(robust), str(plain), "--eval", "eval_fs", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| pirate")]
    assert rows[0].startswith("| pirate | prompts | 0.001 | 1 | — | 0.88 [0.78, 0.98] | — | 0.18 [0.08, 0.28] | 0.50")
    assert rows[1].startswith("| pirate | robust | 0.001 | 1 | — | 0.72 [0.62, 0.82] | — | 0.13 [0.03, 0.23]")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_eval_names_the_file_and_the_fix(tmp_path):
    run = _run(tmp_path, "plain", "prompts", 0, 0.5, 0.1)
    with pytest.raises(FileNotFoundError, match="eval/eval.json not found; pass run dirs evaluated"):
        tool.main([str(run), "--out", str(tmp_path / "p.png")])


def test_a_suite_no_run_evaluated_is_refused(tmp_path):
    run = _run(tmp_path, "plain", "prompts", 0, 0.5, 0.1)
    with pytest.raises(SystemExit, match="'ood'"):
        tool.main([str(run), "--eval", "eval_fs", "--suite", "ood", "--out", str(tmp_path / "p.png")])


def test_malformed_entries_read_as_missing_figures(tmp_path, capsys):
    run = _run(tmp_path, "plain", "prompts", 0, 0.5, 0.1)
    (run / "summary.json").write_text(json.dumps({"persona": "pirate", "config": ["not", "a", "mapping"]}))
    eval_json = run / "eval_fs" / "eval.json"
    suites = json.loads(eval_json.read_text())["suites"]
    suites["capability"] = "not a suite"
    eval_json.write_text(json.dumps({"suites": suites}))
    tool.main([str(run), "--eval", "eval_fs", "--out", str(tmp_path / "p.png")])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pirate")][0]
    assert row == "| pirate | None | — | None | — | 0.50 [0.40, 0.60] | — | — | — |"
