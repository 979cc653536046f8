"""``benchmarks/bench_bf16_sampling.py`` on the tiny model: every arm measured, fp32 against itself exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_bf16_sampling.py"


def test_dry_run_reports_every_arm():
    spec = importlib.util.spec_from_file_location("bench_bf16_sampling", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(2, 2, 0, ["model=tiny", "sampler.max_new_tokens=6"])
    assert set(result["arms"]) == set(bench.ARMS)
    assert result["arms"]["fp32"]["cosine_to_fp32_mean_grad"] == pytest.approx(1.0)
    assert 0 < result["arms"]["bf16 + IS"]["loss_mean"]
    assert result["importance_weights"]["is_weight_mean"] == pytest.approx(1.0, abs=0.05)
    assert set(result["sampling_seconds_per_batch"]) == {"fp32", "bf16"}
    assert "| bf16 + IS |" in bench.markdown(result, "a CPU")
