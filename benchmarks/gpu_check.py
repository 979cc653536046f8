"""One prepared GPU check of the fused kernels: one device call (at most ~8 minutes on an H100/H200), one flat results
folder.  Needs torch, triton, transformers and peft only; what else is missing is noted and its cases skipped.

    python benchmarks/gpu_check.py --out "$OUT"                        # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check       # here: CPU, tiny shapes, Triton interpreted
    python benchmarks/gpu_check.py --install RESULTS/auto_order.json    # afterwards: adopt the measured auto order

Steps, each bounded by its share of ``--budget-s`` (what runs out of time is reported as skipped, never hidden):

1. ``pytest tests/kernels`` on CUDA (Triton compiled; the CUDA extension built when nvcc is there), GPU-side
   tests first; junit XML kept.  ``--noconftest``: the suite-wide conftest needs omegaconf, which the device
   lacks.
2. Kernel benchmark, bf16, N 8192, at the Llama-3-8B, Qwen2.5-7B, Gemma-3-270M and SmolLM2 heads (that order: the
   targets' shape first).  One subprocess per shape; per case time and peak extra memory with its bare GEMMs timed
   alternately in the same process as the floor (``bench_kernels.measure``): divergence (4 GEMMs) for every
   charlit backend, naive, ``torch.compile`` and Liger's fused JSD; per-token log-probs with a trainable head
   against 4 GEMMs (logits, recomputed logits, dX, dW) and with a frozen head against 2; DPO over 8 x 1024 tokens
   (ours per backend, Liger's, naive).
3. Training-step benchmark (``bench_selfdistill.py``): self-distillation-like steps on random SmolLM2 and
   Llama-3.2-1B shaped models, bf16-mixed, tokens/s of sampling, scoring and the optimiser step per backend.
4. The ``backend="auto"`` table: backends whose tests passed here and whose every benchmark case ran, by the
   geometric mean of their time / floor ratios over divergence and log-probs (``charlit.kernels.auto_order``).

Files in ``--out``: summary.md, env.json, pytest.txt, pytest.xml, kernels.csv, train_step.csv, auto_order.json,
log.txt.  Pure-Python wheels put in ``benchmarks/wheels/`` (``pip download liger-kernel --no-deps -d
benchmarks/wheels``) are unpacked onto the workers' path, so Liger can be compared where no index is reachable.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS = HERE / "wheels"
GPU_SHAPES = ("llama3_8b", "qwen25_7b", "gemma3", "smollm2")
N_TOKENS, DPO_SEQS = 8192, 8
DRY_SHAPE = dict(hidden=32, vocab=300, n=8)
BACKENDS = ("triton_rows", "triton", "cuda", "torch")
OPTIONAL = ("liger_kernel", "hydra", "omegaconf", "wandb", "pandas")
DISTRIBUTIONS = {"liger_kernel": "liger-kernel", "hydra": "hydra-core"}
TEST_ORDER = ("triton_rows_backend", "triton_backend", "cuda_compiles", "api", "backends", "cpu_fused", "torch_backend")
"""GPU-side tests first (the CUDA extension's ~90 s build before the CPU-tensor tests, which run here anyway)."""
GPU_DESELECT = "tests/kernels/test_cuda_compiles.py::test_nvcc_compiles"
"""Compile-only nvcc check: redundant where the extension itself is built and run (~60 s saved)."""
DRY_TESTS = (
    "tests/kernels/test_api.py",
    "tests/kernels/test_triton_rows_backend.py::test_divergence_grad_in_forward[0.3-0.5]",
    "tests/kernels/test_triton_rows_backend.py::test_logprobs[False]",
    "tests/kernels/test_torch_backend.py::test_divergence_bias_softcap_padded_teacher",
)
BACKEND_TESTS = {
    "torch": ("test_torch_backend", ""),
    "triton": ("test_triton_backend", ""),
    "triton_rows": ("test_triton_rows_backend", ""),
    "cuda": ("test_cuda_compiles", "test_cuda_backend_matches_reference"),
}
"""Which tests verify a backend: (module, test-name prefix)."""
MIN_LEFT_S = {"compile": 90, "liger_jsd": 60, "dpo_liger": 60}
"""Seconds a case needs left in its shape's share to start on GPU (compilation), default 15."""
SHAPE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
"""Shares of the kernel benchmark's time per shape: the targets' shape gets the most."""
TARGETS = (
    "Llama-3-8B head, bf16, N 8192: divergence fwd+bwd <= 1.3x its 4 GEMMs and faster than Liger's fused JSD at no "
    "more peak extra memory; log-probs <= 1.15x its 4-GEMM floor"
)


def kernel_cases() -> list[tuple[str, str]]:
    """(case, backend) in priority order: the targets' cases first, since the time budget may cut the tail."""
    return [
        ("triton_rows", ""),
        ("liger_jsd", ""),
        ("logprobs", "triton_rows"),
        *[(b, "") for b in BACKENDS if b != "triton_rows"],
        *[("logprobs", b) for b in BACKENDS if b != "triton_rows"],
        ("naive", ""),
        ("logprobs_naive", ""),
        *[("logprobs_frozen", b) for b in BACKENDS],
        *[("dpo_ours", b) for b in BACKENDS],
        ("dpo_liger", ""),
        ("dpo_naive", ""),
        ("compile", ""),
    ]


class Run:
    """The results folder, the log and the clock of one check."""

    def __init__(self, out: Path, budget_s: float, dry: bool):
        self.out, self.dry, self.t0 = out, dry, time.time()
        self.deadline = self.t0 + budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "log.txt").open("w")
        paths = [str(ROOT), str(HERE), *_wheel_paths(), os.environ.get("PYTHONPATH", "")]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
        if dry:
            self.env["TRITON_INTERPRET"] = "1"

    def log(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.deadline - time.time()


def _wheel_paths() -> list[str]:
    """Unpack ``benchmarks/wheels/*.whl`` (pure Python) into a temporary directory; [] when there are none."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if not wheels:
        return []
    target = Path(tempfile.mkdtemp(prefix="gpu_check_wheels_"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return [str(target)]


# ----------------------------------------------------------------------------------------------- step 0: env
def environment(run: Run) -> dict:
    info = _worker(run, ["env", "{}"], 300, dict(shape="env"))[0]
    if info.get("status", "").startswith("failed"):
        raise SystemExit(f"gpu_check: cannot import torch and charlit here: {info['status']}")
    info |= dict(platform=platform.platform(), dry_run=run.dry, argv=sys.argv[1:], wheels=_wheel_names())
    info["missing"] = sorted(m for m, v in info["modules"].items() if v is None)
    (run.out / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    run.log(f"environment: {info.get('device', 'cpu')}, torch {info['torch']}, missing: {info['missing'] or 'none'}")
    return info


def env_worker(job: dict) -> None:
    import shutil

    import torch

    from charlit.kernels.auto_order import device_class
    from charlit.kernels.triton_rows import half_gemm_problem

    mods = {name: _version(name) for name in ("triton", "transformers", "peft", "lightning", *OPTIONAL)}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda, modules=mods)
    info |= dict(nvcc=shutil.which("nvcc"), half_gemm_problem=half_gemm_problem(dev), device_class=device_class(dev))
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info |= dict(device=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1))
    print("RESULT " + json.dumps(info), flush=True)


def _version(module: str) -> str | None:
    """The installed version of ``module`` (None when it cannot be imported), read without importing it."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return metadata.version(DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return "present"


def _wheel_names() -> list[str]:
    return sorted(p.name for p in WHEELS.glob("*.whl")) if WHEELS.is_dir() else []


# --------------------------------------------------------------------------------------------- step 1: tests
def tests(run: Run, limit_s: float) -> dict:
    """Run the kernel tests, stop them with SIGINT at ``limit_s`` (pytest still writes its report), parse it."""
    xml = run.out / "pytest.xml"
    if run.dry:
        targets = list(DRY_TESTS)
    else:
        targets = [f"tests/kernels/test_{name}.py" for name in TEST_ORDER]
        targets += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/kernels").glob("test_*.py"))
        targets = [*dict.fromkeys(targets), "--deselect", GPU_DESELECT]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "--durations=15"]
    cmd += [f"--junitxml={xml}", *targets]
    run.log(f"tests: {' '.join(cmd[3:])} (limit {limit_s:.0f}s)")
    interrupted = False
    with (run.out / "pytest.txt").open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=run.env, cwd=ROOT)
        try:
            rc = proc.wait(timeout=max(limit_s, 1))
        except subprocess.TimeoutExpired:
            interrupted = True
            run.log("tests: time limit reached, interrupting (the report keeps what ran)")
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    outcome = parse_junit(xml) if xml.exists() else {}
    counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("passed", "failed", "skipped")}
    run.log(f"tests: exit {rc}, {counts}")
    return dict(rc=rc, outcome=outcome, counts=counts, interrupted=interrupted)


def parse_junit(xml: Path) -> dict[str, str]:
    """``module::test`` -> passed / failed / skipped."""
    out = {}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        if case.get("name") is None:  # the test a time-limit interrupt stopped
            continue
        key = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        tags = {child.tag for child in case}
        out[key] = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
    return out


def verified(outcome: dict[str, str]) -> set[str]:
    """Backends with at least one passing test of their own and none failing."""
    good = set()
    for backend, (module, prefix) in BACKEND_TESTS.items():
        mine = [v for k, v in outcome.items() if k.startswith(f"{module}::{prefix}")]
        if "passed" in mine and "failed" not in mine:
            good.add(backend)
    return good


# ------------------------------------------------------------------------------------------- step 2: kernels
def kernels(run: Run, info: dict, until: float) -> list[dict]:
    import bench_kernels as bk

    if run.dry:
        shapes = [("dry", DRY_SHAPE["hidden"], DRY_SHAPE["vocab"], DRY_SHAPE["n"])]
        seqs = 2
    else:
        shapes = [(name, *bk.SHAPES[name][:2], N_TOKENS) for name in GPU_SHAPES]
        seqs = DPO_SEQS
    rows = []
    weights = SHAPE_WEIGHTS[: len(shapes)]
    for i, (name, hidden, vocab, n) in enumerate(shapes):
        share = (until - time.time()) * weights[i] / sum(weights[i:])
        job = dict(
            shape=name,
            hidden=hidden,
            vocab=vocab,
            n=n,
            dpo_seqs=seqs,
            dpo_len=n // seqs,
            device="cpu" if run.dry else "cuda",
            dtype="float32" if run.dry else "bfloat16",
            beta=0.5,
            reps=1 if run.dry else 3,
            dry=run.dry,
            deadline=time.time() + share,
            mem_limit_gb=0.5 * info.get("memory_gb", 16),
            cases=kernel_cases(),
        )
        run.log(f"kernels: {name} (H {hidden}, V {vocab}, N {n}), {share:.0f}s")
        rows += _worker(run, ["kernels", json.dumps(job)], share + 60, job)
    _write_csv(run.out / "kernels.csv", rows)
    return rows


def _worker(run: Run, args: list[str], timeout: float, job: dict) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=run.env, cwd=ROOT, timeout=max(timeout, 1))
        stdout, stderr, why = res.stdout, res.stderr, f"exit {res.returncode}"
    except subprocess.TimeoutExpired as err:
        stdout, stderr, why = _text(err.stdout), _text(err.stderr), f"killed after {timeout:.0f}s"
    rows = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    tail = (stderr.strip().splitlines() or [""])[-1][:200]
    if stderr.strip():
        run.log_file.write(f"--- {args[0]} worker stderr (tail) ---\n{stderr[-4000:]}\n")
    done = {(r.get("case"), r.get("backend")) for r in rows}
    for case, backend in job.get("cases", []):
        if (case, backend) not in done:
            rows.append(dict(shape=job["shape"], case=case, backend=backend, status=f"failed: worker {why}: {tail}"))
    if not rows:
        rows.append(dict(shape=job["shape"], status=f"failed: worker {why}: {tail}"))
    for row in (r for r in rows if "status" in r):
        run.log(f"  {_label(row)}: {_brief(row)}")
    return rows


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _label(row: dict) -> str:
    name = " ".join(filter(None, (row.get("shape"), row.get("case") or row.get("model"))))
    return name + (f"@{row['backend']}" if row.get("backend") else "")


def _brief(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "?")
    if "ratio" in row:
        return f"{row['time_s'] * 1e3:.1f} ms, {row['ratio']:.2f}x floor, {row['peak_extra_mb']:.0f} MB"
    return f"train {row['train_tok_s']:.0f} tok/s, step {row['step_tok_s']:.0f} tok/s"


def kernels_worker(job: dict) -> None:
    """One shape: shared inputs, every case in priority order until the shape's deadline; one RESULT line each."""
    import gc

    import bench_kernels as bk
    import torch

    from charlit.kernels.backends import KERNEL_BACKENDS

    dev = torch.device(job["device"])
    base = {k: job[k] for k in ("device", "dtype", "hidden", "vocab", "n", "beta", "dpo_seqs", "dpo_len")}
    tensors = bk.make_inputs(base)
    for case, backend in job["cases"]:
        row = dict(shape=job["shape"], hidden=job["hidden"], vocab=job["vocab"], n=job["n"], case=case, backend=backend)
        name = backend or (case if case in bk.CHARLIT_BACKENDS else "")
        why = _skip_reason(job, case, name, dev, KERNEL_BACKENDS, bk)
        if why:
            print("RESULT " + json.dumps(dict(row, status=f"skipped: {why}")), flush=True)
            continue
        try:
            step, ngemm = bk.case_step(dict(base, case=case, backend=backend or None), **tensors)
            if case in ("logprobs", "logprobs_naive"):
                ngemm = 4  # the recomputed logits of a trainable head's per-row upstream gradient
            res = bk.measure(step, **tensors, ngemm=ngemm, reps=job["reps"])
            keep = ("time_s", "floor_s", "ratio", "peak_extra_mb", "ngemm")
            row |= dict(status="ok", **{k: res[k] for k in keep})
        except Exception as err:  # one case's failure (OOM, a kernel bug) must not hide the others
            row["status"] = f"failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        step = None
        tensors["xs"].grad = tensors["ws"].grad = None
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print("RESULT " + json.dumps(row), flush=True)


def _skip_reason(job, case, name, dev, registry, bk) -> str:
    if job["dry"] and case == "compile":
        return "dry run (torch.compile of the naive loss takes minutes on 2 CPU cores)"
    if job["dry"] and name == "triton":
        return "dry run (the all-Triton kernels take seconds per call interpreted; their tests cover them)"
    if name:
        ok = registry.get(name)().available(dev)
        if not ok:
            return f"backend {name!r} unavailable: {ok.reason}"
        if name == "cuda" and not _cuda_ext_built():
            return "the CUDA extension was not built in the test step (time budget?); no 90 s build mid-benchmark"
    elif case in ("liger_jsd", "dpo_liger") and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not importable (no package index on the device: put its wheel in benchmarks/wheels/)"
    too_big = bk._too_big(case, job["n"], job["vocab"], job["mem_limit_gb"])
    if too_big:
        return too_big
    need = 0 if job["dry"] else MIN_LEFT_S.get(case, 15)
    if job["deadline"] - time.time() < need:
        return f"time budget (needs ~{need}s of the shape's share to start)"
    return ""


def _cuda_ext_built() -> bool:
    from charlit.kernels import cuda_ext

    return (cuda_ext.build_dir() / f"{cuda_ext.NAME}.so").exists()


# ------------------------------------------------------------------------------------------ step 3: training
def training(run: Run, until: float) -> list[dict]:
    models = ["tiny"] if run.dry else ["smollm2", "llama32_1b"]
    rows = []
    for i, model in enumerate(models):
        share = (until - time.time()) / (len(models) - i)
        job = dict(model=model, device="cpu" if run.dry else "cuda", deadline=time.time() + share)
        run.log(f"training step: {model}, {share:.0f}s")
        rows += _worker(run, ["train", json.dumps(job)], share + 60, dict(shape=model))
    _write_csv(run.out / "train_step.csv", rows)
    return rows


def train_worker(job: dict) -> None:
    import bench_selfdistill as bs
    import torch

    from charlit.kernels.backends import KERNEL_BACKENDS

    dev = torch.device(job["device"])
    work = bs.DRY_WORK if dev.type == "cpu" else bs.GPU_WORK
    backends = []
    for name in ("triton_rows", "torch") if dev.type == "cpu" else BACKENDS:
        ok = KERNEL_BACKENDS.get(name)().available(dev)
        if ok and (name != "cuda" or _cuda_ext_built()):
            backends.append(name)
        else:
            why = ok.reason if not ok else "the CUDA extension was not built in the test step"
            print("RESULT " + json.dumps(dict(model=job["model"], backend=name, status=f"skipped: {why}")), flush=True)
    for row in bs.run(job["model"], backends, job["device"], work, job["deadline"]):
        print("RESULT " + json.dumps(row), flush=True)


# --------------------------------------------------------------------------------------- step 4: auto order
def auto_table(run: Run, info: dict, test_result: dict, rows: list[dict]) -> dict:
    from charlit.kernels import auto_order

    good = verified(test_result["outcome"])
    ratios, excluded = {}, {}
    for backend in BACKENDS:
        mine = [r for r in rows if _backend_of(r) == backend and r["case"] in (backend, "logprobs", "logprobs_frozen")]
        bad = [f"{r['shape']} {r['case']}: {r['status']}" for r in mine if r["status"] != "ok"]
        if backend not in good:
            excluded[backend] = "no passing test of its own here (failed, skipped or not run: see pytest.txt)"
        elif not mine or bad:
            excluded[backend] = "; ".join(bad) or "not benchmarked"
        else:
            ratios[backend] = [r["ratio"] for r in mine]
    order = auto_order.rank(ratios)
    entry = dict(
        order=order,
        device=info.get("device", "cpu"),
        torch=info["torch"],
        triton=info["modules"].get("triton"),
        date=time.strftime("%Y-%m-%d"),
        basis="geometric mean of time / GEMM floor: divergence and trainable-head log-probs (4 GEMMs), frozen-head "
        f"log-probs (2), {'fp32, the dry shape' if run.dry else f'bf16, N {N_TOKENS}, every benchmarked head'}; "
        "only backends whose own tests passed on this device and whose every case ran",
        geomean_ratio={b: round(v, 4) for b, v in auto_order.scores(ratios).items()},
        excluded=excluded,
    )
    cls = info["device_class"]
    table = dict(dry_run=run.dry, classes={cls: entry} if order else {})
    (run.out / "auto_order.json").write_text(json.dumps(table, indent=2) + "\n")
    run.log(f"auto order for {cls}: {order or 'nothing measured'}; excluded: {excluded or 'none'}")
    return dict(cls=cls, **entry)


def _backend_of(row: dict) -> str:
    return row.get("backend") or row.get("case", "")


# ------------------------------------------------------------------------------------------------- summary
def summary(run: Run, info: dict, test_result: dict, krows: list[dict], trows: list[dict], order: dict) -> None:
    lines = [
        "# GPU check" + (" (DRY RUN: CPU, tiny shapes, Triton interpreted: no number here means anything)" * run.dry),
        "",
        f"- device: {info.get('device', 'cpu')} ({info.get('capability', '-')}), torch {info['torch']} "
        f"(CUDA {info['cuda']}), triton {info['modules'].get('triton')}, nvcc {info['nvcc'] or 'absent'}",
        f"- missing packages (their cases skipped): {', '.join(info['missing']) or 'none'}",
        f"- wall time {time.time() - run.t0:.0f}s",
        "",
        "## Tests",
        "",
        f"exit {test_result['rc']}: {test_result['counts']}"
        + (
            " (INTERRUPTED at the time limit: the tests after the last one listed did not run)"
            * test_result["interrupted"]
        )
        + "; see pytest.txt / pytest.xml",
    ]
    failed = [k for k, v in test_result["outcome"].items() if v == "failed"]
    lines += [f"- FAILED {k}" for k in failed[:30]]
    lines += ["", "## Kernels (time / floor of the bare GEMMs in the same process; peak extra memory)", ""]
    lines += _table(krows, ("shape", "case", "backend", "time_s", "ratio", "ngemm", "peak_extra_mb", "status"))
    lines += ["", f"## Targets ({TARGETS})", ""] + _targets(krows, run.dry)
    lines += ["", "## Training step (self_distill-like, random weights, LoRA r16)", ""]
    cols = ("model", "backend", "sample_tok_s", "score_tok_s", "train_tok_s", "step_tok_s", "peak_mem_mb")
    lines += _table(trows, (*cols, "loss_dtypes", "status"))
    lines += ["", "## backend='auto'", ""]
    if order["order"]:
        lines.append(f"measured order for {order['cls']}: {', '.join(order['order'])}")
        if not run.dry:
            lines.append("adopt it: python benchmarks/gpu_check.py --install <this folder>/auto_order.json")
    else:
        lines.append("nothing measured: the table stays empty and AUTO_ORDER applies")
    lines += [f"- not ranked: {b}: {why}" for b, why in order["excluded"].items()]
    (run.out / "summary.md").write_text("\n".join(lines) + "\n")


def _table(rows: list[dict], cols: tuple) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |")
    return out


def _fmt(col: str, v) -> str:
    if v is None or v == "":
        return ""
    if col == "time_s":
        return f"{v * 1e3:.1f} ms"
    if isinstance(v, float):
        return f"{v:.2f}" if col == "ratio" else f"{v:.0f}"
    return str(v)


def _targets(rows: list[dict], dry: bool) -> list[str]:
    shape = "dry" if dry else "llama3_8b"
    get = {(r["case"], r.get("backend", "")): r for r in rows if r.get("shape") == shape and r["status"] == "ok"}
    ours, liger, lp = get.get(("triton_rows", "")), get.get(("liger_jsd", "")), get.get(("logprobs", "triton_rows"))
    out = []
    if ours:
        out.append(_check("divergence <= 1.3x its 4 GEMMs", ours["ratio"] <= 1.3, f"{ours['ratio']:.2f}x"))
        if liger:
            faster = ours["time_s"] < liger["time_s"]
            speed = f"{ours['time_s'] / liger['time_s']:.2f}x its time"
            out.append(_check("faster than Liger's fused JSD", faster, speed))
            leaner = ours["peak_extra_mb"] <= liger["peak_extra_mb"]
            mem = f"{ours['peak_extra_mb']:.0f} vs {liger['peak_extra_mb']:.0f} MB"
            out.append(_check("no more peak extra memory than Liger", leaner, mem))
        else:
            out.append("- Liger comparison: not measured (liger-kernel missing or its case did not run)")
    else:
        out.append("- divergence: not measured")
    if lp:
        out.append(_check("log-probs <= 1.15x its 4-GEMM floor", lp["ratio"] <= 1.15, f"{lp['ratio']:.2f}x"))
    else:
        out.append("- log-probs: not measured")
    return out


def _check(what: str, ok: bool, got: str) -> str:
    return f"- {what}: {got}: {'met' if ok else 'NOT met'}"


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------- main
WORKERS = {"env": env_worker, "kernels": kernels_worker, "train": train_worker}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreted, a test subset")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget of the whole check (s)")
    ap.add_argument("--install", type=Path, help="merge a check's auto_order.json into charlit/kernels and exit")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, job = args.worker
        WORKERS[kind](json.loads(job))
        return 0
    if args.install:
        from charlit.kernels import auto_order

        print(f"installed {auto_order.install(args.install)} into {auto_order.TABLE_PATH}")
        return 0
    run = Run(args.out, args.budget_s, args.dry_run)
    info = environment(run)
    if not run.dry and "device" not in info:
        raise SystemExit("gpu_check: no CUDA device here; use --dry-run on CPU")
    test_result = tests(run, min(180.0, 0.4 * run.left()))
    krows = kernels(run, info, run.deadline - max(70.0, 0.2 * run.left()))
    trows = training(run, run.deadline)
    order = auto_table(run, info, test_result, krows)
    summary(run, info, test_result, krows, trows, order)
    run.log(f"done: {run.out} ({', '.join(sorted(p.name for p in run.out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(HERE)]
    sys.exit(main())
