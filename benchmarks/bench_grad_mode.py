"""Grad-in-forward vs recompute-in-backward for the torch backend, measured in one run.

Both variants run alternately in the same process (interleaved, min over --reps) so that
load from other processes on a shared CPU hits both alike.  ``--threads 1`` with CPU time
(``time.process_time``) gives the most stable ratio on a busy machine.

    python benchmarks/bench_grad_mode.py --n 1024 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from charlit.kernels import fused_linear_divergence, torch_chunked


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    clock = time.process_time if a.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    xs = torch.randn(a.n, a.hidden, requires_grad=True)
    ws = (torch.randn(a.vocab, a.hidden) / a.hidden**0.5).requires_grad_()
    xt, wt = torch.randn(a.n, a.hidden), torch.randn(a.vocab, a.hidden) / a.hidden**0.5

    def step(eager: bool) -> float:
        torch_chunked.GRAD_IN_FORWARD = eager
        xs.grad = ws.grad = None
        t0 = clock()
        fused_linear_divergence(xs, ws, xt, wt, beta=a.beta, backend="torch").backward()
        return clock() - t0

    def floor() -> float:
        t0 = clock()
        with torch.no_grad():
            for i in range(0, a.n, 1024):
                s = xs[i : i + 1024] @ ws.t()
                xt[i : i + 1024] @ wt.t()
                s @ ws
                s.t() @ xs[i : i + 1024]
        return clock() - t0

    step(True), step(False), floor()  # warm-up
    best = {"forward": float("inf"), "recompute": float("inf"), "floor": float("inf")}
    for _ in range(a.reps):
        best["forward"] = min(best["forward"], step(True))
        best["recompute"] = min(best["recompute"], step(False))
        best["floor"] = min(best["floor"], floor())
    torch_chunked.GRAD_IN_FORWARD = True
    f, r, g = best["forward"], best["recompute"], best["floor"]
    print(f"N={a.n} H={a.hidden} V={a.vocab} beta={a.beta} threads={torch.get_num_threads()} clock={clock.__name__}")
    print(
        f"4-GEMM floor {g:.3f}s | grad-in-forward {f:.3f}s ({f / g:.2f}x floor) | "
        f"recompute {r:.3f}s ({r / g:.2f}x floor) | recompute/forward = {r / f:.2f}"
    )


if __name__ == "__main__":
    main()
