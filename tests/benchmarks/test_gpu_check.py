"""``benchmarks/gpu_check.py``: its dry run (every step on CPU, Triton interpreted, ~45 s on 2 busy cores) and the
rules that turn its measurements into the ``backend="auto"`` table."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from charlit.kernels import auto_order

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
FILES = {"summary.md", "env.json", "pytest.txt", "pytest.xml", "kernels.csv", "train_step.csv", "auto_order.json"}


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # about 45 s on 2 cores: `make test-slow` (the unit tests below stay in the default run)
def test_dry_run_runs_every_step_and_writes_one_flat_folder(tmp_path):
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert names == FILES | {"log.txt"} and all(p.is_file() for p in out.iterdir())
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)

    kernels = {(r["case"], r["backend"]): r for r in _rows(out / "kernels.csv")}
    for key in [("triton_rows", ""), ("logprobs", "triton_rows"), ("logprobs_frozen", "triton_rows"), ("torch", "")]:
        assert kernels[key]["status"] == "ok" and float(kernels[key]["ratio"]) > 0, key
    assert kernels[("dpo_ours", "triton_rows")]["status"] == "ok"
    assert kernels[("cuda", "")]["status"].startswith("skipped: backend 'cuda' unavailable")
    assert kernels[("compile", "")]["status"].startswith("skipped: dry run")
    train = {r["backend"]: r for r in _rows(out / "train_step.csv")}
    assert train["triton_rows"]["status"] == "ok" and float(train["triton_rows"]["train_tok_s"]) > 0

    table = json.loads((out / "auto_order.json").read_text())
    assert table["dry_run"] is True and set(table["classes"]) == {"cpu"}
    assert {"torch", "triton_rows"} == set(table["classes"]["cpu"]["order"])
    with pytest.raises(ValueError, match="--dry-run"):
        auto_order.install(out / "auto_order.json", tmp_path / "table.json")
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "## Targets" in summary and "log-probs <= 1.15x" in summary


def test_a_backend_is_ranked_only_with_passing_tests_and_every_case_run(gpu_check, tmp_path):
    outcome = gpu_check.parse_junit(_junit(tmp_path))
    assert gpu_check.verified(outcome) == {"triton_rows", "cuda", "torch"}  # triton: a failure; cuda: its GPU test

    def row(case, backend, ratio, status="ok"):
        return dict(shape="llama3_8b", case=case, backend=backend, ratio=ratio, status=status)

    rows = [
        row("triton_rows", "", 1.2),
        row("logprobs", "triton_rows", 1.1),
        row("logprobs_frozen", "triton_rows", 1.05),
        row("triton", "", 0.9),
        row("torch", "", 1.4),
        row("logprobs", "torch", 1.5),
        row("cuda", "", 1.3),
        row("logprobs", "cuda", None, "failed: OutOfMemoryError"),
        row("naive", "", 5.0),
    ]
    run = gpu_check.Run(tmp_path / "out", 60, dry=False)
    info = dict(device="NVIDIA H200", device_class="cuda-sm90", torch="2.13", modules={"triton": "3.9"})
    entry = gpu_check.auto_table(run, info, dict(outcome=outcome), rows)
    assert entry["order"] == ["triton_rows", "torch"]
    assert set(entry["excluded"]) == {"triton", "cuda"} and "OutOfMemoryError" in entry["excluded"]["cuda"]
    written = json.loads((tmp_path / "out" / "auto_order.json").read_text())
    assert written["dry_run"] is False and written["classes"]["cuda-sm90"]["order"] == ["triton_rows", "torch"]
    assert auto_order.install(tmp_path / "out" / "auto_order.json", tmp_path / "table.json") == ["cuda-sm90"]


def _junit(tmp_path: Path) -> Path:
    cases = [
        ("test_triton_rows_backend", "test_logprobs[True]", ""),
        ("test_triton_backend", "test_logprobs", "<failure message='x'/>"),
        ("test_triton_backend", "test_half_inputs", ""),
        ("test_torch_backend", "test_x[fused]", ""),
        ("test_cuda_compiles", "test_sources_ship_as_package_data", ""),
        ("test_cuda_compiles", "test_cuda_backend_matches_reference", ""),
        ("test_api", "test_bad_arguments", "<skipped/>"),
    ]
    body = "".join(f"<testcase classname='tests.kernels.{m}' name='{n}'>{c}</testcase>" for m, n, c in cases)
    path = tmp_path / "pytest.xml"
    path.write_text(f"<testsuites><testsuite>{body}</testsuite></testsuites>")
    return path


def test_targets_are_judged_on_the_llama_shape(gpu_check):
    rows = [
        dict(shape="llama3_8b", case="triton_rows", backend="", status="ok", ratio=1.25, time_s=0.1, peak_extra_mb=900),
        dict(shape="llama3_8b", case="liger_jsd", backend="", status="ok", ratio=2.0, time_s=0.2, peak_extra_mb=800),
        dict(shape="llama3_8b", case="logprobs", backend="triton_rows", status="ok", ratio=1.2),
    ]
    lines = gpu_check._targets(rows, dry=False)
    assert lines == [
        "- divergence <= 1.3x its 4 GEMMs: 1.25x: met",
        "- faster than Liger's fused JSD: 0.50x its time: met",
        "- no more peak extra memory than Liger: 900 vs 800 MB: NOT met",
        "- log-probs <= 1.15x its 4-GEMM floor: 1.20x: NOT met",
    ]


def test_wheels_in_benchmarks_wheels_are_unpacked_onto_the_workers_path(gpu_check, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "toy-1.0-py3-none-any.whl", "w") as z:
        z.writestr("toy/__init__.py", "VALUE = 7\n")
    monkeypatch.setattr(gpu_check, "WHEELS", wheels)
    (path,) = gpu_check._wheel_paths()
    assert (Path(path) / "toy" / "__init__.py").read_text() == "VALUE = 7\n"
    assert gpu_check._wheel_names() == ["toy-1.0-py3-none-any.whl"]
