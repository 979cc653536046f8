"""Training-step throughput of self-distillation-like work on a randomly initialised model, per kernel backend.

The model is built from a transformers ``LlamaConfig`` directly (no hydra/omegaconf, no download), with LoRA r16/α32
on every linear layer as charlit's objectives default to.  One step mirrors ``method=self_distill``: the student
samples ``--new-tokens`` per prompt from the bare prompt; the teacher, the same network with the adapter off, scores
the responses after a longer, constitution-like context; the student's response hidden states go through
``fused_linear_divergence`` (reverse KL over the full vocabulary) with the lm_head as charlit passes it, then
backward and an AdamW step.  Three phases are timed apart (CUDA-synchronised):

* sampling: ``generate`` (sampled at T 1, exactly ``--new-tokens`` per prompt), tokens/s = generated tokens / s;
* scoring: the teacher's forward without grad, tokens/s = response tokens / s;
* optimiser step: student forward + loss + backward + AdamW, per backend, tokens/s = response tokens / s.

Sampling and scoring are measured once per model (they do not touch the loss kernels); the optimiser step is
repeated ``--steps`` times per backend on the same samples, after one untimed step (compilation).  On GPU the
step runs bf16-mixed (fp32 weights under ``torch.autocast(bfloat16)``, Lightning's ``bf16-mixed``); the dtypes
the loss received are reported.  On CPU everything is fp32.

    python benchmarks/bench_selfdistill.py --model smollm2 --backends triton_rows,triton,torch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

MODELS = {
    "smollm2": dict(  # SmolLM2-135M
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "llama32_1b": dict(  # Llama-3.2-1B (1.24 B parameters)
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}
GPU_WORK = dict(prompts=8, prompt_len=64, teacher_extra=192, new_tokens=128, steps=3)
DRY_WORK = dict(prompts=2, prompt_len=8, teacher_extra=8, new_tokens=8, steps=1)


def build(name: str, device):
    """A LoRA-wrapped LlamaForCausalLM of shape ``MODELS[name]``, seeded random weights, fp32."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODELS[name], tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, lora)


class _Timer:
    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def __call__(self, into: list):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        into.append(time.perf_counter() - t0)


def _response_hidden(model, context, responses):
    """Final hidden states predicting each response token, ``[prompts * new_tokens, H]``."""
    import torch

    ids = torch.cat([context, responses], dim=1)
    hidden = model.get_base_model().model(input_ids=ids).last_hidden_state
    start = context.shape[1] - 1
    return hidden[:, start : start + responses.shape[1]].reshape(-1, hidden.shape[-1])


def run(name: str, backends: list[str], device: str, work: dict, deadline: float) -> list[dict]:
    """One row per backend: tokens/s of the three phases and of the whole step, peak memory, loss dtypes."""
    import torch

    from charlit.kernels import fused_linear_divergence

    dev = torch.device(device)
    model = build(name, dev)
    vocab = MODELS[name]["vocab_size"]
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, vocab, (work["prompts"], work["prompt_len"]), generator=gen).to(dev)
    constitution = torch.randint(3, vocab, (1, work["teacher_extra"]), generator=gen).to(dev)
    teacher_context = torch.cat([constitution.expand(work["prompts"], -1), prompts], dim=1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    timed = _Timer(dev)
    head = model.get_base_model().lm_head.weight
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    n_new = work["new_tokens"]

    def sample():
        with torch.no_grad(), autocast:
            out = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                temperature=1.0,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                pad_token_id=0,
            )
        return out[:, prompts.shape[1] :]

    def score(responses):
        with torch.no_grad(), autocast, model.disable_adapter():
            return _response_hidden(model, teacher_context, responses)

    def train(responses, teacher, backend):
        with autocast:
            student = _response_hidden(model, prompts, responses)
        loss = fused_linear_divergence(student, head, teacher, head, beta=1.0, backend=backend)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return student.dtype, head.dtype

    sample_s, score_s = [], []
    responses = sample()  # warm-up
    with timed(sample_s):
        responses = sample()
    teacher = score(responses)
    with timed(score_s):
        teacher = score(responses)
    tokens = responses.numel()
    rows = []
    for backend in backends:
        row = dict(
            model=name,
            params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            backend=backend,
            device=str(dev),
            prompts=work["prompts"],
            new_tokens=n_new,
            sample_tok_s=tokens / sample_s[0],
            score_tok_s=tokens / score_s[0],
        )
        if time.time() > deadline:
            rows.append(dict(row, status="skipped: time budget"))
            continue
        try:
            train(responses, teacher, backend)  # warm-up: kernel compilation
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            train_s = []
            for _ in range(work["steps"]):
                with timed(train_s):
                    dtypes = train(responses, teacher, backend)
            step = statistics.median(train_s)
            peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
            row |= dict(
                train_tok_s=tokens / step,
                step_tok_s=tokens / (sample_s[0] + score_s[0] + step),
                train_s=step,
                peak_mem_mb=peak,
                loss_dtypes=f"hidden {dtypes[0]}, weight {dtypes[1]}".replace("torch.", ""),
                status="ok",
            )
        except Exception as err:  # one backend's failure must not hide the others' numbers
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    ap.add_argument("--backends", default="triton_rows,torch", help="comma list of kernel backends for the loss")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--budget-s", type=float, default=600.0, help="backends not started by then are skipped")
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = GPU_WORK if device == "cuda" else DRY_WORK
    for row in run(args.model, args.backends.split(","), device, work, time.time() + args.budget_s):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
