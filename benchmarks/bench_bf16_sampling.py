"""Does sampling from bf16 weights give the fp32 learner the same training signal? (``sampler.precision``)

On the default model (SmolLM2-135M-Instruct, LoRA as ``method=self_distill`` trains it, pirate), for ``--batches``
batches of ``--batch`` training prompts, one ``self_distill`` loss and its gradient on the LoRA parameters from:

* ``fp32``: samples decoded by the fp32 learner itself (exactly on-policy);
* ``fp32, other seed``: the same with other draws, the noise floor any comparison has to be read against;
* ``bf16 + IS``: the same seed, decoded from bf16 copies of the weights, each token's loss times its truncated
  importance weight ``min(cap, Π_{s<t} p/q)`` (what charlit trains with when ``sampler.precision`` is bf16);
* ``bf16, no IS``: those samples with every weight 1 (what the correction corrects).

Reported side by side: the mean loss and gradient norm, the cosine between each arm's batch-mean gradient and the fp32
arm's (against the other-seed floor), how many tokens bf16 decoding drew differently from fp32 with the same seed,
the importance weights' mean and clipped share, the mean |log p − log q| of drawn tokens, and the seconds sampling
took per batch in each precision (on this CPU; the speed depends on native bf16, see ``charlit.machine``).

    python benchmarks/bench_bf16_sampling.py [--batches 6] [--batch 4] [--tag bf16_sampling] [hydra overrides]

Writes ``benchmarks/results/<tag>.{json,md}`` (a dry run: ``--batches 2 --batch 2 --tag dry model=tiny``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ARMS = ("fp32", "fp32, other seed", "bf16 + IS", "bf16, no IS")


def _objective(extra: list[str]):
    from hydra import compose, initialize_config_dir

    from charlit.config import register_configs
    from charlit.run import build_objective

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=none", "val.every_n_steps=0", *extra])
    objective, _ = build_objective(cfg)
    return objective


def _flat_grad(loss, params):
    import torch

    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


def _cosine(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def run(batches: int, batch: int, seed: int, overrides: list[str] = ()) -> dict:
    import torch

    from charlit.data.prompts import load_prompt_set

    objective = _objective([f"data.batch_size={batch}", f"seed={seed}", *overrides])
    sampler = objective.sampler.inner
    params = [p for p in objective.policy.parameters() if p.requires_grad]
    prompts = load_prompt_set("general_train")[: batches * batch]
    base_ctx = objective.ctx
    stats = {arm: {"loss": [], "grad_norm": [], "grads": []} for arm in ARMS}
    seconds = {"fp32": [], "bf16": []}
    identical, agreed, weights = [], [], {"is_weight_mean": [], "is_clipped_frac": [], "sampler_logprob_gap": []}

    def rollouts(precision: str, run_seed: int, contexts):
        sampler.precision = precision
        objective.ctx = dataclasses.replace(base_ctx, seed=run_seed)
        start = time.perf_counter()
        out = objective.sample(contexts)
        seconds[precision].append(time.perf_counter() - start)
        return out

    def record(arm: str, loss, grad) -> None:
        stats[arm]["loss"].append(loss.item())
        stats[arm]["grad_norm"].append(grad.norm().item())
        stats[arm]["grads"].append(grad)

    for b in range(batches):
        chunk = prompts[b * batch : (b + 1) * batch]
        contexts = objective.student_contexts(chunk)
        for arm, precision, run_seed in (("fp32", "fp32", seed), ("fp32, other seed", "fp32", seed + 1)):
            drawn_here = rollouts(precision, run_seed, contexts)
            if arm == "fp32":
                reference = drawn_here
            scored = objective.score(chunk, contexts, drawn_here.responses)
            loss, _ = objective.distill_loss(scored, drawn_here.responses)
            record(arm, loss, _flat_grad(loss, params))
        low = rollouts("bf16", seed, contexts)
        for ours, theirs in zip(low.responses, reference.responses):
            identical.append(ours == theirs)
            same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            agreed.append(same / max(len(ours), len(theirs), 1))
        scored = objective.score(chunk, contexts, low.responses)
        w, metrics = objective.off_policy_weights(scored, low)
        for key in weights:
            weights[key].append(metrics[key])
        for arm, arm_weights in (("bf16 + IS", w), ("bf16, no IS", None)):
            loss, _ = objective.distill_loss(scored, low.responses, arm_weights)
            record(arm, loss, _flat_grad(loss, params))
        print(f"batch {b + 1}/{batches}: " + ", ".join(f"{a} {stats[a]['loss'][-1]:.4f}" for a in ARMS), flush=True)

    mean_grad = {arm: torch.stack(stats[arm]["grads"]).mean(0) for arm in ARMS}
    table = {
        arm: {
            "loss_mean": statistics.mean(stats[arm]["loss"]),
            "loss_sd": statistics.stdev(stats[arm]["loss"]) if batches > 1 else 0.0,
            "grad_norm_mean": statistics.mean(stats[arm]["grad_norm"]),
            "cosine_to_fp32_mean_grad": _cosine(mean_grad[arm], mean_grad["fp32"]),
            "per_batch_cosine_to_fp32": statistics.mean(
                _cosine(g, f) for g, f in zip(stats[arm]["grads"], stats["fp32"]["grads"])
            ),
        }
        for arm in ARMS
    }
    return {
        "arms": table,
        "identical_responses": statistics.mean(identical),
        "agreeing_prefix": statistics.mean(agreed),
        "importance_weights": {k: statistics.mean(v) for k, v in weights.items()},
        "sampling_seconds_per_batch": {k: statistics.median(v) for k, v in seconds.items()},
        "batches": batches,
        "batch": batch,
        "seed": seed,
        "overrides": list(overrides),
    }


def markdown(result: dict, cpu: str) -> str:
    lines = [
        f"CPU: {cpu}",
        "",
        f"`self_distill`, {result['batches']} batches of {result['batch']} training prompts (seed {result['seed']}, "
        f"overrides: {' '.join(result['overrides']) or 'none'}); one loss and LoRA gradient per batch and arm.",
        "",
        "| arm | loss (mean ± sd over batches) | gradient norm | cosine of mean gradient to fp32's "
        "| per-batch cosine |",
        "|---|---|---|---|---|",
    ]
    for arm, row in result["arms"].items():
        lines.append(
            f"| {arm} | {row['loss_mean']:.4f} ± {row['loss_sd']:.4f} | {row['grad_norm_mean']:.4f} | "
            f"{row['cosine_to_fp32_mean_grad']:.3f} | {row['per_batch_cosine_to_fp32']:.3f} |"
        )
    w, s = result["importance_weights"], result["sampling_seconds_per_batch"]
    lines += [
        "",
        f"- bf16 decoding against fp32 with the same seed: {result['identical_responses']:.0%} of responses identical, "
        f"the first {result['agreeing_prefix']:.0%} of a response the same on average",
        f"- importance weights: mean {w['is_weight_mean']:.3f}, clipped {w['is_clipped_frac']:.1%}; "
        f"mean |log p − log q| of a drawn token {w['sampler_logprob_gap']:.4f}",
        f"- sampling, median seconds per batch: fp32 {s['fp32']:.2f}, bf16 {s['bf16']:.2f} "
        f"(bf16/fp32 speed {s['fp32'] / s['bf16']:.2f}×)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="bf16_sampling")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=tiny for a dry run")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from charlit.machine import describe_cpu

    result = run(args.batches, args.batch, args.seed, args.overrides)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"cpu": describe_cpu(), **result}, indent=1) + "\n")
    text = markdown(result, describe_cpu())
    (RESULTS / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
