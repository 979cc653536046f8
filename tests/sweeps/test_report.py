import csv
import json
import subprocess
import sys

import pytest

from charlit.sweeps.report import collect_jobs, write_report
from report import main as report_main
from tests.conftest import REPO


def _job(root, name, method, teacher, divergence_end, progress, ci):
    job = root / name
    job.mkdir(parents=True)
    summary = {
        "method": method,
        "teacher": teacher["name"],
        "data": "prompts",
        "persona": "pirate",
        "steps": 3,
        "wall_time_s": 1.5,
        "peak_rss_mb": 100.0,
        "metrics": {
            "val/divergence_start": 0.2,
            "val/divergence_end": divergence_end,
            "val/persona_progress_end": progress,
            "val/persona_progress_end_ci95": ci,
            "eval/id/gain": 0.5,
        },
        "config": {"seed": 0, "teacher": teacher},
    }
    (job / "summary.json").write_text(json.dumps(summary))


def test_report_has_one_row_per_job_with_intervals_and_plots(tmp_path):
    _job(tmp_path, "0_method=self_distill", "self_distill", {"name": "self"}, 0.1, 0.6, 0.05)
    _job(tmp_path, "1_method=self_distill", "self_distill", {"name": "amplified", "alpha": 2.0}, 0.05, 0.8, 0.1)
    (tmp_path / "2_failed").mkdir()  # a job that died: no summary, no row
    rows = collect_jobs(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["teacher"] for r in rows] == ["self", "amplified(α=2)"]
    assert rows[1]["val/persona_progress_end_ci95"] == 0.1 and rows[0]["eval/id/gain"] == 0.5

    result = write_report(tmp_path)
    with open(result["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and float(table[1]["val/divergence_end"]) == 0.05
    assert "| 0.8 ± 0.1 |" in result["markdown"].read_text()
    assert {p.name for p in result["plots"]} >= {"report_val_divergence_end.png", "report_val_persona_progress_end.png"}
    assert all(p.stat().st_size > 1000 for p in result["plots"])


def _run(job_dir, method, flops, history):
    job_dir.mkdir(parents=True)
    summary = {
        "method": method,
        "teacher": "self",
        "data": "prompts",
        "persona": "pirate",
        "metrics": {"compute/flops": flops, "val/persona_progress_end": history[-1][1]},
        "val_history": [{"step": i, "compute/flops": x, "val/persona_progress": y} for i, (x, y) in enumerate(history)],
        "config": {"seed": 0},
    }
    (job_dir / "summary.json").write_text(json.dumps(summary))


def test_report_has_compute_columns_recipe_totals_and_a_curve_per_job(tmp_path):
    _run(tmp_path / "0_arm=self_distill", "self_distill", 30.0, [(0.0, 0.0), (30.0, 0.5)])
    recipe = tmp_path / "1_arm=oct"
    _run(recipe / "0_dpo", "dpo", 100.0, [(40.0, 0.0), (100.0, 0.3)])  # its data cost: the curve starts at 40
    _run(recipe / "1_sft", "sft", 20.0, [(0.0, 0.3), (20.0, 0.6)])
    stages = [{"name": "dpo", "compute": {"flops": 100.0}}, {"name": "sft", "compute": {"flops": 20.0}}]
    (recipe / "recipe.json").write_text(json.dumps({"recipe": "pairs_introspection", "stages": stages}))

    result = write_report(tmp_path)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["self_distill"]["compute/flops"] == 30.0 and "compute/recipe_flops" not in rows["self_distill"]
    assert (rows["dpo"]["compute/recipe_flops"], rows["sft"]["compute/recipe_flops"]) == (100.0, 120.0)
    assert "compute/flops" in result["columns"] and "compute/recipe_flops" in result["columns"]
    curve = tmp_path / "report_persona_progress_vs_flops.png"
    assert curve in result["plots"] and curve.stat().st_size > 1000 and curve.name in result["markdown"].read_text()


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "No finished jobs" in capsys.readouterr().err


@pytest.mark.slow  # ~45 s: four tiny training jobs through Hydra (make test-slow)
def test_multirun_of_four_tiny_jobs_leaves_a_report(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "method=sft,self_distill",
        "teacher=self,amplified",
        "model=tiny",
        "trainer.max_steps=2",
        "logger=csv",
        "sampler.max_new_tokens=8",
        "data.val_size=4",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "sweep" / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["method"], r["teacher"]) for r in rows) == [
        ("self_distill", "amplified(α=1)"),
        ("self_distill", "self"),
        ("sft", "amplified(α=1)"),
        ("sft", "self"),
    ]
    assert (tmp_path / "sweep" / "report_val_persona_progress_end.png").is_file()
    assert all(float(r["compute/flops"]) > 0 for r in rows)
    assert (tmp_path / "sweep" / "report_persona_progress_vs_flops.png").is_file()
