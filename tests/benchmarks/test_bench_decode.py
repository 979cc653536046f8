"""``benchmarks/bench_decode.py`` on the tiny model: every arm timed, the fused and the model's own forward agree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"


def test_dry_run_times_every_arm():
    spec = importlib.util.spec_from_file_location("bench_decode", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run("tiny", 2, 4, 1)
    assert [r["arm"] for r in result["rows"]] == list(bench.ARMS)
    assert all(r["median_s"] > 0 and 1 <= r["steps"][0] <= 4 for r in result["rows"])
    assert set(result["build_s"]) == {"fused, bf16", "fused, fp32"}
    assert all(b["copy_s"] > 0 and b["merge_s"] > 0 for b in result["build_s"].values())
    assert "| fused, bf16 |" in bench.markdown(result)
