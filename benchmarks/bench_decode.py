"""Decoding speed of the sampler on the default model: the fused Llama forward against the model's own, fp32 and bf16.

``HFSampler.generate`` on the bundled SmolLM2-135M-Instruct with LoRA r16 on every linear layer (as training decodes
it), ``--batch`` chat prompts, ``--tokens`` new tokens sampled at temperature 1 (end-of-turn tokens still stop a row,
so every arm is given the same seeds and the per-token time is what is compared). For each arm, one warm-up call,
then ``--repeats`` calls alternating between arms (A B C D A B C D …, so load that comes and goes falls on all alike);
the median seconds per call and per decode step (a call's seconds over its longest response) are reported, with the
times to make the fused copy of the weights (once per run) and to merge the adapters into it (part of each fused
call).

    python benchmarks/bench_decode.py [--batch 4] [--tokens 64] [--repeats 3] [--tag decode] [--model tiny]

Writes ``benchmarks/results/<tag>.{json,md}``, headed by the CPU (``charlit.machine``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PROMPTS = (
    "Tell me about the sea.",
    "What is your favourite food and why?",
    "Explain rain to a child.",
    "How do I fix a bike tyre?",
    "Write two lines about autumn.",
    "What should I pack for a day hike?",
    "Why is the sky blue?",
    "Give me a tip for learning a language.",
)
ARMS = {
    "fused, bf16": (True, "bf16"),
    "model, bf16": (False, "bf16"),
    "fused, fp32": (True, "fp32"),
    "model, fp32": (False, "fp32"),
}


def run(model_name: str, batch: int, tokens: int, repeats: int) -> dict:
    """Per arm: seconds per call and per decode step (medians and raw), plus the fused copy's build seconds."""
    if not 1 <= batch <= len(PROMPTS):
        raise ValueError(f"--batch {batch}: use 1 to {len(PROMPTS)}.")
    from hydra import compose, initialize_config_dir

    from charlit.config import register_configs
    from charlit.data.chat import render_prompt_ids
    from charlit.machine import describe_cpu
    from charlit.models import load_model, load_tokenizer
    from charlit.sampling.base import SamplingParams
    from charlit.sampling.fused_llama import FusedLlama
    from charlit.sampling.hf import HFSampler

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model_name}"]).model
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer).model
    prompts = [render_prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in PROMPTS[:batch]]
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    samplers = {arm: HFSampler(tokenizer, batch_size=batch, precision=p, fused=f) for arm, (f, p) in ARMS.items()}
    seconds = {arm: [] for arm in ARMS}
    steps = {arm: [] for arm in ARMS}
    for sampler in samplers.values():
        sampler.generate(model, prompts, params, seed=0)
    for repeat in range(repeats):
        for arm, sampler in samplers.items():
            start = time.perf_counter()
            out = sampler.generate(model, prompts, params, seed=repeat + 1)
            seconds[arm].append(time.perf_counter() - start)
            steps[arm].append(max(len(o) for o in out))
    build = {}
    for arm in ("fused, bf16", "fused, fp32"):  # the copy each sampler keeps: made once, its adapters merged per call
        held = samplers[arm]._fused
        made, merged = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            FusedLlama(model, held.dtype, held.plain_linear, held.packed)
            made.append(time.perf_counter() - start)
            start = time.perf_counter()
            held.refresh()
            merged.append(time.perf_counter() - start)
        build[arm] = {"packed": held.packed, "copy_s": statistics.median(made), "merge_s": statistics.median(merged)}
    rows = [
        {
            "arm": arm,
            "median_s": statistics.median(seconds[arm]),
            "ms_per_step": statistics.median(1e3 * s / n for s, n in zip(seconds[arm], steps[arm])),
            "seconds": seconds[arm],
            "steps": steps[arm],
        }
        for arm in ARMS
    ]
    settings = {"model": model_name, "batch": batch, "tokens": tokens, "repeats": repeats}
    return {"cpu": describe_cpu(), "settings": settings, "rows": rows, "build_s": build}


def markdown(result: dict) -> str:
    s, build = result["settings"], result["build_s"]
    return "\n".join(
        [
            f"CPU: {result['cpu']}",
            "",
            f"model {s['model']} + LoRA, batch {s['batch']}, up to {s['tokens']} tokens at temperature 1, median of "
            f"{s['repeats']} alternated calls. The fused copy is made once per run and its adapters merged in each "
            "call (inside the call's time): "
            + "; ".join(
                f"{arm}{' (packed)' if b['packed'] else ''}: made in {1e3 * b['copy_s']:.0f} ms, "
                f"merged in {1e3 * b['merge_s']:.0f} ms"
                for arm, b in build.items()
            ),
            "",
            "| arm | s per call | ms per decode step |",
            "|---|---|---|",
            *(f"| {r['arm']} | {r['median_s']:.2f} | {r['ms_per_step']:.1f} |" for r in result["rows"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model config name")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="decode")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    try:
        result = run(args.model, args.batch, args.tokens, args.repeats)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
