"""Benchmark the fused losses against naive PyTorch, torch.compile and Liger-Kernel.

Every (shape, N, case) runs in a fresh subprocess (``--worker``) so peak memory is per case:

* CPU: a sampler thread polls RSS (/proc/self/statm) every 0.5 ms during the timed
  forward+backward iterations; "peak extra" = max RSS - RSS right before them, taken after
  one warm-up iteration (compiles, lazy inits), ``gc.collect()`` and ``malloc_trim(0)`` so
  memory freed by the warm-up is not counted as available.  Inputs, weights and the
  gradient buffers of the warm-up are already in the baseline except dX/dW/db, which are
  re-allocated each iteration and so count (every method needs them).
* GPU: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats`` minus
  ``memory_allocated()`` at the same point.

Time = min over ``--reps`` of one forward+backward (synchronised on GPU).  The floor is the
bare GEMMs of the same shapes, timed in the same subprocess alternately with the case (4 GEMMs
of 2*N*H*V for divergence: student fwd, teacher fwd, dX, dW; 3 for log-probs, 2 with a frozen
lm_head), run in 1024-
row tiles so the floor never allocates [N, V]; "ratio" = case time / floor time.  On a shared
CPU, compare ratios from one run, not absolute seconds across runs.

Usage:
  python benchmarks/bench_kernels.py --quick
  python benchmarks/bench_kernels.py --shapes smollm2 --ns 512,2048 --cases torch,naive
  python benchmarks/bench_kernels.py            # everything that fits this device
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name -> (hidden, vocab, default Ns, gpu_only)
SHAPES = {
    "smollm2": (576, 49152, [512, 2048, 8192], False),
    "gemma3": (640, 262144, [1024, 4096], False),
    "llama3_8b": (4096, 128256, [4096, 16384], True),
    "qwen25_7b": (3584, 152064, [4096, 16384], True),
    "quick": (256, 8192, [256, 1024], False),
}
CHARLIT_BACKENDS = ["torch", "triton", "triton_rows", "cuda"]
DIV_CASES = ["naive", "compile", *CHARLIT_BACKENDS, "liger_jsd"]
DPO_CASES = ["dpo_ours", "dpo_liger", "dpo_naive"]
LOGPROB_CASES = ["logprobs", "logprobs_frozen", "logprobs_naive"]
"""Per-token log-probs with a random per-row upstream gradient on the divergence shapes: ours with a
trainable lm_head (floor: logits, dX, dW), ours with a frozen one as under LoRA (floor: logits, dX),
and materialised ``log_softmax`` (trainable head)."""


# ----------------------------------------------------------------------------- worker side
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler:
    def __init__(self, period=0.0005):
        self.period, self.peak, self._stop = period, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = _rss_bytes()
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _naive_jsd(s_logits, t_logits, beta, temperature=1.0):
    import torch

    ls = torch.log_softmax(s_logits.float() / temperature, -1)
    lt = torch.log_softmax(t_logits.float() / temperature, -1)
    if beta == 0:
        per = (lt.exp() * (lt - ls)).sum(-1)
    elif beta == 1:
        per = (ls.exp() * (ls - lt)).sum(-1)
    else:
        lm = torch.logsumexp(
            torch.stack([lt + torch.log(torch.tensor(beta)), ls + torch.log(torch.tensor(1 - beta))]), 0
        )
        per = beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    return per.mean()


def _gemm_floor(xs, ws, xt, wt, ngemm, sync):
    """The bare GEMMs (tiled by 1024 rows so [N, V] is never allocated), as a callable."""
    import torch

    n = xs.shape[0]

    def run():
        dw = torch.zeros_like(ws)
        for i in range(0, n, 1024):
            s = xs[i : i + 1024] @ ws.t()
            if ngemm == 4:
                torch.mm(xt[i : i + 1024], wt.t())
            torch.mm(s.to(ws.dtype), ws)
            if ngemm >= 3:
                dw.addmm_(s.t().to(ws.dtype), xs[i : i + 1024])
        sync()

    return run


def make_inputs(spec: dict) -> dict:
    """Seeded student (with grad) and teacher hidden states and lm_head weights of the spec's shape."""
    import torch

    dev, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    h, v, n = spec["hidden"], spec["vocab"], spec["n"]
    torch.manual_seed(0)
    return dict(
        xs=torch.randn(n, h, device=dev, dtype=dtype).requires_grad_(),
        ws=(torch.randn(v, h, device=dev, dtype=dtype) / h**0.5).requires_grad_(),
        xt=torch.randn(n, h, device=dev, dtype=dtype),
        wt=torch.randn(v, h, device=dev, dtype=dtype) / h**0.5,
    )


def case_step(spec: dict, xs, ws, xt, wt):
    """(one forward+backward of ``spec["case"]`` as a callable, its GEMM-floor count).  ``spec["backend"]``
    picks the charlit backend of the log-prob and DPO cases (default: auto)."""
    import torch

    from charlit.kernels import fused_linear_divergence, fused_linear_logprobs

    case, beta, dev, n, v, h = spec["case"], spec["beta"], xs.device, spec["n"], spec["vocab"], spec["hidden"]
    backend = spec.get("backend")
    ws.requires_grad_(case != "logprobs_frozen")
    if case in ("naive", "compile"):

        def loss_fn(a, b, c, d):
            return _naive_jsd(a @ b.t(), c @ d.t(), beta)

        fn = torch.compile(loss_fn) if case == "compile" else loss_fn
        return (lambda: fn(xs, ws, xt, wt).backward()), 4
    if case in CHARLIT_BACKENDS:
        return (lambda: fused_linear_divergence(xs, ws, xt, wt, beta=beta, backend=case).backward()), 4
    if case == "liger_jsd":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        mod = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, compiled=dev.type == "cuda"
        )
        labels = torch.zeros(n, dtype=torch.long, device=dev)
        return (lambda: mod(xs, ws, xt, wt, labels).backward()), 4
    if case in LOGPROB_CASES:
        tgt = torch.randint(0, v, (n,), device=dev)
        up = torch.randn(n, device=dev)
        if case == "logprobs_naive":

            def step():
                z = torch.log_softmax((xs @ ws.t()).float(), -1)
                z.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).backward(up)

            return step, 3
        step = lambda: fused_linear_logprobs(xs, ws, tgt, backend=backend).backward(up)  # noqa: E731
        return step, 2 if case == "logprobs_frozen" else 3
    if case.startswith("dpo_"):
        seqs, t = spec["dpo_seqs"], spec["dpo_len"]
        hid = xs.view(seqs, t, h)
        ref_hid = xt.view(seqs, t, h)
        tgt = torch.randint(0, v, (seqs, t), device=dev)
        tgt[:, : t // 4] = -100  # prompt tokens
        half = seqs // 2
        if case == "dpo_liger":
            from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

            mod = LigerFusedLinearDPOLoss(beta=0.1, compiled=dev.type == "cuda", use_ref_model=True)
            return (lambda: mod(ws, hid, tgt, ref_input=ref_hid, ref_weight=wt)[0].backward()), 3

        def seq_lp(hh, w):
            if case == "dpo_ours":
                return fused_linear_logprobs(hh, w, tgt, backend=backend).sum(-1)
            z = torch.log_softmax((hh @ w.t()).float(), -1)
            m = tgt != -100
            return (z.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1) * m).sum(-1)

        def step():
            lp = seq_lp(hid, ws)
            with torch.no_grad():
                rlp = seq_lp(ref_hid, wt)
            margin = (lp[:half] - rlp[:half]) - (lp[half:] - rlp[half:])
            torch.nn.functional.logsigmoid(0.1 * margin).neg().mean().backward()

        return step, 3
    raise ValueError(f"unknown case {case!r}; cases: {', '.join(DIV_CASES + LOGPROB_CASES + DPO_CASES)}")


def measure(step, xs, ws, xt, wt, ngemm: int, reps: int) -> dict:
    """Time (min over ``reps``) and peak extra memory of ``step``, alternating with its ``ngemm``-GEMM floor."""
    import torch

    dev = xs.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def one():
        xs.grad = ws.grad = None
        step()
        sync()

    one()  # warm-up: compilation, lazy init
    xs.grad = ws.grad = None
    _trim()
    floor_fn = _gemm_floor(xs.detach(), ws.detach(), xt, wt, ngemm, sync)
    floor_fn()  # warm-up of the floor
    _trim()
    # case and floor alternate so that load from other processes hits both alike
    times, floors, peak = [], [], 0
    for _ in range(reps):
        xs.grad = ws.grad = None
        _trim()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            one()
            times.append(time.perf_counter() - t0)
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            base = _rss_bytes()
            with _PeakSampler() as smp:
                t0 = time.perf_counter()
                one()
                times.append(time.perf_counter() - t0)
            peak = max(peak, smp.peak - base)
        xs.grad = ws.grad = None
        _trim()
        t0 = time.perf_counter()
        with torch.no_grad():
            floor_fn()
        floors.append(time.perf_counter() - t0)
    return dict(
        time_s=min(times),
        floor_s=min(floors),
        ratio=min(times) / min(floors),
        peak_extra_mb=peak / 2**20,
        ngemm=ngemm,
        times=times,
        floors=floors,
    )


def worker(spec: dict) -> dict:
    from charlit.kernels import torch_chunked

    if spec.get("tile_budget_mb"):
        torch_chunked.TILE_BUDGET_BYTES = torch_chunked.LOGPROB_TILE_BUDGET_BYTES = int(spec["tile_budget_mb"] * 2**20)
    t = make_inputs(spec)
    step, ngemm = case_step(spec, **t)
    return measure(step, **t, ngemm=ngemm, reps=spec["reps"])


# ----------------------------------------------------------------------------- driver side
def _available(case: str, device: str) -> str | None:
    """None if runnable, else the reason it is skipped."""
    import importlib.util

    if case in ("triton", "triton_rows", "cuda") and device != "cuda":
        return "GPU only"
    if case in ("liger_jsd", "dpo_liger") and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not installed"
    if case in ("triton", "triton_rows") and importlib.util.find_spec("triton") is None:
        return "triton not installed"
    return None


def _too_big(case: str, n: int, v: int, limit_gb: float) -> str | None:
    if case in ("naive", "compile", "dpo_naive", "logprobs_naive"):
        need = n * v * 4 * 10 / 2**30  # ~10 live fp32 [N, V] tensors with autograd
        if need > limit_gb:
            return f"needs ~{need:.0f} GB of [N, V] buffers (> --mem-limit-gb {limit_gb})"
    return None


def run_case(spec: dict, timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(status=f"timeout after {timeout}s")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        err = (out.stderr.strip().splitlines() or ["?"])[-1]
        return dict(status=f"failed: {err[:160]}")
    return dict(status="ok", **json.loads(lines[-1][7:]))


def write_outputs(rows: list[dict], tag: str) -> None:
    import pandas as pd

    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(RESULTS / f"{tag}.csv", index=False)
    cols = ["shape", "hidden", "vocab", "n", "case", "time_s", "floor_s", "ratio", "peak_extra_mb", "status"]
    df2 = df[[c for c in cols if c in df.columns]].copy()
    for c in ("time_s", "floor_s"):
        if c in df2:
            df2[c] = df2[c].map(lambda x: f"{x:.3f}" if x == x else "")
    if "ratio" in df2:
        df2["ratio"] = df2["ratio"].map(lambda x: f"{x:.2f}" if x == x else "")
    if "peak_extra_mb" in df2:
        df2["peak_extra_mb"] = df2["peak_extra_mb"].map(lambda x: f"{x:.0f}" if x == x else "")
    header = "| " + " | ".join(df2.columns) + " |\n|" + "---|" * len(df2.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in df2.itertuples(index=False))
    sys.path.insert(0, str(ROOT))  # the checkout's charlit, as the workers get it
    from charlit.machine import describe_cpu

    machine = f"CPU: {describe_cpu()}\n\n"  # ratios differ between processors: every table names its own
    (RESULTS / f"{tag}.md").write_text(machine + header + body)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = df[df.status == "ok"]
        shapes = [s for s in ok["shape"].unique() if s != "dpo"]
        if shapes:
            fig, axes = plt.subplots(len(shapes), 2, figsize=(11, 3.6 * len(shapes)), squeeze=False)
            for row, shape in zip(axes, shapes):
                sub = ok[ok["shape"] == shape]
                for case, g in sub.groupby("case"):
                    g = g.sort_values("n")
                    row[0].plot(g["n"], g["ratio"], marker="o", label=case)
                    row[1].plot(g["n"], g["peak_extra_mb"], marker="o", label=case)
                row[0].set(xscale="log", title=f"{shape}: time / bare-GEMM floor", xlabel="tokens N", ylabel="ratio")
                row[1].set(
                    xscale="log", yscale="log", title=f"{shape}: peak extra memory", xlabel="tokens N", ylabel="MB"
                )
                row[0].axhline(1.0, color="k", lw=0.5)
                row[0].legend(fontsize=7)
                row[1].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(RESULTS / f"{tag}.png", dpi=110)
    except ImportError:
        pass


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small smoke run (H 256, V 8192, small DPO)")
    ap.add_argument("--shapes", default=None, help=f"comma list of {','.join(SHAPES)} (default: all for the device)")
    ap.add_argument("--ns", default=None, help="comma list of token counts overriding each shape's defaults")
    ap.add_argument("--cases", default=",".join(DIV_CASES + LOGPROB_CASES + DPO_CASES), help="comma list of cases")
    ap.add_argument("--beta", type=float, default=0.5, help="divergence beta (0 fwd KL, 1 rev KL, else JSD)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument(
        "--reps", type=int, default=None, help="timed iterations per case (default 3; 2 when N*H*V > 1e11 on CPU)"
    )
    ap.add_argument("--mem-limit-gb", type=float, default=8.0, help="skip materialising cases needing more")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per case")
    ap.add_argument("--tag", default=None, help="output file stem under benchmarks/results/")
    ap.add_argument(
        "--tile-budget-mb",
        type=float,
        default=None,
        help="override both tile budgets of torch_chunked (live [B, V] buffers) for our cases",
    )
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(json.loads(args.worker))
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    cases = [c for c in args.cases.split(",") if c]
    if args.quick:
        shape_names = ["quick"]
    elif args.shapes:
        shape_names = args.shapes.split(",")
    else:
        shape_names = [s for s, (_, _, _, gpu) in SHAPES.items() if s != "quick" and (device == "cuda" or not gpu)]
    jobs = []
    for name in shape_names:
        h, v, ns, gpu_only = SHAPES[name]
        if gpu_only and device != "cuda":
            print(f"skip shape {name}: GPU only")
            continue
        for n in [int(x) for x in args.ns.split(",")] if args.ns else ns:
            for case in (c for c in cases if c in DIV_CASES + LOGPROB_CASES):
                jobs.append(dict(shape=name, hidden=h, vocab=v, n=n, case=case))
    if any(c in DPO_CASES for c in cases):
        h, v = (256, 8192) if args.quick else (576, 49152)
        seqs, t = (8, 128) if args.quick else (8, 512)  # 2 x 4 sequences (chosen, rejected)
        for case in (c for c in cases if c in DPO_CASES):
            jobs.append(dict(shape="dpo", hidden=h, vocab=v, n=seqs * t, case=case, dpo_seqs=seqs, dpo_len=t))
    rows = []
    t_start = time.time()
    for job in jobs:
        reps = args.reps or (2 if job["n"] * job["vocab"] * job["hidden"] > 1e11 and device == "cpu" else 3)
        spec = dict(job, device=device, dtype=dtype, beta=args.beta, reps=reps, tile_budget_mb=args.tile_budget_mb)
        why = _available(job["case"], device) or _too_big(job["case"], job["n"], job["vocab"], args.mem_limit_gb)
        res = dict(status=f"skipped: {why}") if why else run_case(spec, args.timeout)
        row = dict(job, device=device, dtype=dtype, beta=args.beta, reps=reps, **res)
        rows.append(row)
        print(
            json.dumps({k: row.get(k) for k in ("shape", "n", "case", "time_s", "ratio", "peak_extra_mb", "status")}),
            flush=True,
        )
    tag = args.tag or f"bench_{device}{'_quick' if args.quick else ''}"
    write_outputs(rows, tag)
    print(f"wrote {RESULTS}/{tag}.{{csv,md,png}} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
