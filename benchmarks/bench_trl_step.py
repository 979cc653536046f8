"""End-to-end training-step benchmark: charlit's ``dpo`` and ``on_policy_distill`` against TRL's
``DPOTrainer`` and ``GKDTrainer`` on the same model, data, batch, precision and LoRA settings.

Every case runs in a fresh subprocess (``--worker CASE``) so its peak RSS (``ru_maxrss``) is its own.
A step is timed from the trainer's step-begin hook to its step-end hook (forward, backward, optimizer;
generation included for on-policy cases); the first ``--warmup`` steps are dropped and the median of
the rest is reported. Shared settings: the bundled SmolLM2-135M-Instruct in fp32 (``bf16=False``), LoRA
r16/α32 on all linear layers, lr 5e-5, gradient checkpointing off for both (TRL turns it on by default;
that would also disable the KV cache in GKD's generation), no evaluation, no checkpoint saving. charlit's sampler
is held at fp32 (``sampler.precision=fp32``) so both sides decode at the same precision; ``charlit_gkd_auto`` is the
same step at charlit's default ``sampler.precision=auto`` (decoding from bf16 copies of the weights, with truncated
importance weights on the loss, where a timing on this machine says bf16 is faster; the learner stays fp32),
compared with the same fp32 TRL step: what a user of each tool gets without changing a setting.

* DPO: 2 pairs per step from ``--dpo-pairs`` (conversational prompt/chosen/rejected), sigmoid loss, β 0.1,
  reference = the base with the LoRA adapter disabled (both frameworks). The default,
  ``benchmarks/data/pirate_pairs_pipeline.jsonl``, is 16 pairs written by charlit's data pipeline with the
  default model (``python generate.py data=pairs persona=pirate data.generate.prompts.num=16
  generation.max_new_tokens=192``): ~215 tokens per sequence over the pairs a 5-step run reads, the size of
  the issue's TRL anchor (~227); ``--dpo-pairs bundled`` takes the hand-written pirate pairs (~80 tokens).
* On-policy distillation: 4 prompts per step, 64 new tokens sampled at temperature 1, reverse KL (β 1)
  over the full vocabulary, λ 1 (every step on-policy). TRL's GKD scores with a separate teacher model
  (here a second copy of the same base, with the prompt as given); charlit's teacher is the same network
  with the adapter disabled and the constitution as a teacher-only system prompt (a longer context).

* bf16 (run by default only where the CPU has native bf16, AMX or AVX512-BF16; ``--cases`` forces them):
  ``charlit_dpo_bf16`` is the DPO step with ``trainer.precision=bf16-mixed`` (fp32 master weights, autocast, fp32
  accumulation in the fused loss) against ``trl_dpo_bf16`` (``DPOTrainer`` with ``bf16=True``);
  ``charlit_gkd_bf16`` is the on-policy step with ``trainer.precision=bf16-mixed`` and ``sampler.precision=bf16``
  (decoding from bf16 copies of the weights, samples reweighted with truncated importance weights) against
  ``trl_gkd_bf16`` (``GKDTrainer`` with ``bf16=True``).

Usage: ``python benchmarks/bench_trl_step.py [--steps 5] [--cases charlit_dpo,trl_dpo,charlit_gkd,trl_gkd]
[--dpo-pairs FILE|bundled]``
(needs ``pip install trl datasets`` for the TRL cases; they are reported as skipped without it).
Writes ``benchmarks/results/trl_step.{csv,md}``; the table is headed by the CPU model, its core count and its
AVX2 / AVX-512 / AMX flags (``charlit.machine``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CASES = ("charlit_dpo", "trl_dpo", "charlit_gkd", "charlit_gkd_auto", "trl_gkd")
BF16_CASES = ("charlit_dpo_bf16", "trl_dpo_bf16", "charlit_gkd_bf16", "trl_gkd_bf16")
LR, LORA_R, LORA_ALPHA = 5e-5, 16, 32
DPO_PAIRS, GKD_PROMPTS, GKD_NEW_TOKENS = 2, 4, 64
PIPELINE_PAIRS = REPO / "benchmarks" / "data" / "pirate_pairs_pipeline.jsonl"
BUNDLED_PAIRS = REPO / "charlit" / "data" / "pairs" / "pirate.jsonl"
GKD_PRECISION = {
    "charlit_gkd": ["sampler.precision=fp32"],
    "charlit_gkd_auto": ["sampler.precision=auto"],
    "charlit_gkd_bf16": ["sampler.precision=bf16", "trainer.precision=bf16-mixed"],
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _charlit(method_overrides: list[str], steps: int) -> tuple[list[float], str]:
    """Step times, and the precision the objective's sampler decoded in."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from charlit.config import register_configs
    from charlit.run import build_objective

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "logger=none",
                "val.every_n_steps=0",
                f"optim.lr={LR}",
                "optim.warmup_steps=0",
                f"model.lora.r={LORA_R}",
                f"model.lora.alpha={LORA_ALPHA}",
                f"trainer.max_steps={steps}",
                "trainer.enable_progress_bar=false",
                "+trainer.enable_model_summary=false",
                *method_overrides,
            ],
        )
    objective, datamodule = build_objective(cfg)
    times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t0)

    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, callbacks=[StepTimer()], **{k: v for k, v in cfg.trainer.items()}
    )
    trainer.fit(objective, datamodule=datamodule)
    return times, ("bf16" if objective.sampler.off_policy(objective.policy) else "fp32")


def _trl_common(out_dir: str, steps: int, batch: int, bf16: bool = False) -> dict:
    return dict(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        bf16=bf16,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
    )


def _trl(kind: str, steps: int, pairs: Path, bf16: bool = False) -> list[float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from charlit.data.io import read_jsonl
    from charlit.data.prompts import load_prompt_set
    from charlit.models.bundled import converted_dir

    source = str(converted_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    lora = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out_dir:
        if kind == "dpo":
            from trl import DPOConfig, DPOTrainer

            rows = read_jsonl(pairs)
            data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
            args = DPOConfig(**_trl_common(out_dir, steps, DPO_PAIRS), beta=0.1, max_length=1024)
            trainer = DPOTrainer(
                model=model,
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=lora,
                callbacks=[StepTimer()],
            )
        else:
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            prompts = load_prompt_set("general_train")
            # GKD's collator needs a full conversation; with lmbda=1 the assistant turn is replaced by a sample.
            data = Dataset.from_list(
                [
                    {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "Sure."}]}
                    for p in prompts
                ]
            )
            args = GKDConfig(
                **_trl_common(out_dir, steps, GKD_PROMPTS, bf16),
                lmbda=1.0,
                beta=1.0,
                temperature=1.0,
                max_new_tokens=GKD_NEW_TOKENS,
                max_length=512,
            )
            trainer = GKDTrainer(
                model=model,
                teacher_model=teacher,
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=lora,
                callbacks=[StepTimer()],
            )
        trainer.train()
    return times


def worker(case: str, steps: int, pairs: Path) -> dict:
    status = "ok"
    if case in ("charlit_dpo", "charlit_dpo_bf16"):
        precision = ["trainer.precision=bf16-mixed"] if case.endswith("bf16") else []
        times, _ = _charlit(
            ["method=dpo", f"data.path={pairs}", f"data.batch_size={DPO_PAIRS}", "data.max_length=1024", *precision],
            steps,
        )
    elif case in GKD_PRECISION:
        times, decoded = _charlit(
            [
                *GKD_PRECISION[case],
                "method=on_policy_distill",
                "data=prompts",
                "method.lmbda=1.0",
                "method.beta=1.0",
                f"data.batch_size={GKD_PROMPTS}",
                f"sampler.max_new_tokens={GKD_NEW_TOKENS}",
                "sampler.temperature=1.0",
            ],
            steps,
        )
        status = f"ok, decoded in {decoded}"
    elif case in ("trl_dpo", "trl_gkd", "trl_dpo_bf16", "trl_gkd_bf16"):
        try:
            import trl  # noqa: F401
        except ImportError:
            return {"case": case, "status": "skipped: pip install trl datasets"}
        times = _trl(case.split("_")[1], steps, pairs, bf16=case.endswith("bf16"))
    else:
        raise ValueError(f"Unknown case {case!r}; choose from {', '.join(CASES + BF16_CASES)}.")
    return {"case": case, "status": status, "step_times_s": times, "peak_rss_mb": _peak_rss_mb()}


def worker_env() -> dict[str, str]:
    """A worker's environment: this checkout's charlit first on its path (a script's own path is ``benchmarks/``, so
    without it a worker would time whichever charlit is installed), W&B off."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps per case (first --warmup dropped)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", help="comma-separated; default: the fp32 cases, plus bf16 where the CPU has it")
    parser.add_argument("--tag", default="trl_step")
    parser.add_argument(
        "--dpo-pairs", default=str(PIPELINE_PAIRS), help="JSONL of prompt/chosen/rejected, or 'bundled'"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pairs = BUNDLED_PAIRS if args.dpo_pairs == "bundled" else Path(args.dpo_pairs).resolve()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, pairs)), flush=True)
        return
    sys.path.insert(0, str(REPO))  # the checkout's charlit, as the workers get it (worker_env)
    from charlit.machine import describe_cpu, native_bf16

    cases = args.cases.split(",") if args.cases else [*CASES, *(BF16_CASES if native_bf16() else ())]
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", case, "--steps", str(args.steps), "--dpo-pairs", str(pairs)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=worker_env(),
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            rows.append(
                {"case": case, "status": f"failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
            )
        else:
            result = json.loads(line[len("RESULT ") :])
            kept = result.get("step_times_s", [])[args.warmup :]
            if kept:
                result["median_step_s"] = statistics.median(kept)
            rows.append(result)
        print(
            f"{case}: {rows[-1].get('median_step_s', rows[-1]['status'])} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    by_case = {r["case"]: r for r in rows}
    pairs_compared = (
        ("charlit_dpo", "trl_dpo"),
        ("charlit_gkd", "trl_gkd"),
        ("charlit_gkd_auto", "trl_gkd"),
        ("charlit_dpo_bf16", "trl_dpo_bf16"),
        ("charlit_gkd_bf16", "trl_gkd_bf16"),
    )
    for ours, theirs in pairs_compared:
        a, b = by_case.get(ours, {}), by_case.get(theirs, {})
        if "median_step_s" in a and "median_step_s" in b:
            a["speedup_vs_trl"] = b["median_step_s"] / a["median_step_s"]
            a["rss_vs_trl"] = a["peak_rss_mb"] / b["peak_rss_mb"]

    RESULTS.mkdir(parents=True, exist_ok=True)
    fields = ["case", "status", "median_step_s", "peak_rss_mb", "speedup_vs_trl", "rss_vs_trl"]
    with open(RESULTS / f"{args.tag}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"CPU: {describe_cpu()} (speed-ups differ between processors: compare rows of one table)",
        "",
        *(
            []
            if set(BF16_CASES) & set(cases)
            else [
                "bf16 cases not run: this CPU has no native bf16 (`--cases` with the `_bf16` cases forces them)",
                "",
            ]
        ),
        "| case | median s/step | peak RSS MB | speed-up vs TRL | RSS vs TRL | status |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['case']} | {fmt(r.get('median_step_s'), '.2f')} | {fmt(r.get('peak_rss_mb'), '.0f')} | "
            f"{fmt(r.get('speedup_vs_trl'), '.2f')} | {fmt(r.get('rss_vs_trl'), '.2f')} | {r['status']} |"
        )
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
