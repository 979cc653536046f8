"""How much a top-k + tail teacher cache (``teacher=cached``) loses against the full-vocabulary teacher, on real text.

The bundled pirate conversations are scored twice by the default model (SmolLM2-135M-Instruct): as the student
(the bare conversation, no constitution) and as the teacher (the same network with the pirate constitution as its
system prompt, ``charlit.data.chat.teacher_messages``); each assistant turn is a response, and its tokens' final
hidden states are taken with ``charlit.models.sequences.response_hidden``.  For every k (16, 64, 256) the teacher's
rows are reduced to ``topk_teacher`` (ids, log-probs, log of the left-over mass) and the student's loss
``fused_linear_topk_divergence`` is compared with the full-vocabulary ``fused_linear_divergence`` (beta 0 = forward
KL and beta 1 = reverse KL, mean over tokens):

* loss: both values and the relative shortfall (full - top-k) / full (>= 0: the top-k loss is a lower bound);
* gradient w.r.t. the student hidden states: relative L2 error ||g_k - g|| / ||g|| and cosine;
* teacher mass covered by the top-k, 1 - exp(tail), mean and min over tokens;
* cache bytes per token: k * (4 + 4) + 4 (int32 id, fp32 log-prob, fp32 tail: the on-disk format), k * (4 + 2) + 4
  with fp16 log-probs, against a full fp16 row (2 V);
* one forward+backward's seconds, top-k (given the cache) vs full (student and teacher logits).

    python benchmarks/bench_topk_teacher.py --out benchmarks/results/topk_teacher.md
    python benchmarks/bench_topk_teacher.py --model tiny --tokens 64      # dry run: random 2-layer model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KS = (16, 64, 256)
BETAS = (0.0, 1.0)
PERSONA = "pirate"


def load(name: str, device: str):
    """The default model (or the tiny random one) with its tokenizer, fp32, no LoRA, in eval mode."""
    from omegaconf import OmegaConf

    from charlit.models import load_model
    from charlit.models.bundled import BUNDLED_ID

    cfg = OmegaConf.create(
        {"name_or_path": "tiny" if name == "tiny" else BUNDLED_ID, "dtype": "float32", "lora": {"r": 0}}
    )
    loaded = load_model(cfg, apply_lora=False)
    return loaded.model.to(device).eval(), loaded.tokenizer


def examples(tokenizer, tokens: int):
    """(student contexts, teacher contexts, responses) of assistant turns until ``tokens`` response tokens."""
    from charlit.data.chat import render_response_ids, student_messages, teacher_messages
    from charlit.data.constitution import resolve_persona
    from charlit.data.io import CONVERSATION_DIR, load_conversations

    constitution = resolve_persona(PERSONA)
    students, teachers, responses, total = [], [], [], 0
    for conversation in load_conversations(CONVERSATION_DIR / f"{PERSONA}.jsonl"):
        for i, message in enumerate(conversation):
            if message["role"] != "assistant" or total >= tokens:
                continue
            context = conversation[:i]
            s_ctx, response = render_response_ids(tokenizer, student_messages(context), message)
            t_ctx, t_response = render_response_ids(tokenizer, teacher_messages(context, constitution), message)
            if t_response != response:  # a template that renders the turn differently after a system prompt
                continue
            students.append(s_ctx)
            teachers.append(t_ctx)
            responses.append(response)
            total += len(response)
    if total < tokens:
        raise SystemExit(f"the {PERSONA} conversations hold only {total} response tokens; ask for --tokens <= {total}")
    return students, teachers, responses


def hidden_states(model, contexts, responses, pad_id: int, tokens: int, batch: int = 4):
    """``[tokens, H]`` final hidden states predicting the response tokens, a few examples per forward."""
    import torch

    from charlit.models.sequences import response_hidden

    parts = []
    with torch.no_grad():
        for i in range(0, len(responses), batch):
            parts.append(response_hidden(model, contexts[i : i + batch], responses[i : i + batch], pad_id))
    return torch.cat(parts)[:tokens].float()


def _step(fn, x):
    """(loss, d loss / d x, seconds) of one forward+backward."""
    import torch

    x = x.detach().clone().requires_grad_()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    loss = fn(x)
    loss.backward()
    sync()
    return float(loss.detach()), x.grad, time.perf_counter() - t0


def measure(model, tokenizer, tokens: int, ks=KS, betas=BETAS) -> tuple[list[dict], dict]:
    import torch

    from charlit.kernels import fused_linear_divergence, fused_linear_topk_divergence, topk_teacher
    from charlit.models import lm_head

    students, teachers, responses = examples(tokenizer, tokens)
    hs = hidden_states(model, students, responses, tokenizer.pad_token_id, tokens)
    ht = hidden_states(model, teachers, responses, tokenizer.pad_token_id, tokens)
    head = lm_head(model)
    w = head.weight.detach().float()
    b = None if head.bias is None else head.bias.detach().float()
    vocab = w.shape[0]

    def full(beta, teacher=ht):
        return lambda x: fused_linear_divergence(
            x, w, teacher, w, beta=beta, student_bias=b, teacher_bias=b, softcap=head.softcap
        )

    def topk(beta, cache):
        return lambda x: fused_linear_topk_divergence(x, w, *cache, beta=beta, student_bias=b, softcap=head.softcap)

    warm = topk_teacher(ht[:16], w, 4, bias=b, softcap=head.softcap)  # first-use builds (cpu_fused) off the clock
    _step(full(0.0, ht[:16]), hs[:16])
    _step(lambda x: fused_linear_topk_divergence(x, w, *warm, student_bias=b, softcap=head.softcap), hs[:16])
    reference = {beta: _step(full(beta), hs) for beta in betas}
    rows = []
    for k in ks:
        cache = topk_teacher(ht, w, k, bias=b, softcap=head.softcap)
        covered = -torch.expm1(cache[2].double())
        for beta in betas:
            loss_full, g_full, t_full = reference[beta]
            loss_k, g_k, t_k = _step(topk(beta, cache), hs)
            g_full, g_k = g_full.double().flatten(), g_k.double().flatten()
            rows.append(
                dict(
                    k=k,
                    beta=beta,
                    loss_full=loss_full,
                    loss_topk=loss_k,
                    loss_shortfall=(loss_full - loss_k) / loss_full if loss_full else 0.0,
                    grad_rel_l2=float((g_k - g_full).norm() / g_full.norm()),
                    grad_cos=float(torch.nn.functional.cosine_similarity(g_k, g_full, dim=0)),
                    mass_mean=float(covered.mean()),
                    mass_min=float(covered.min()),
                    bytes_fp32=k * 8 + 4,
                    bytes_fp16=k * 6 + 4,
                    bytes_full=2 * vocab,
                    s_topk=t_k,
                    s_full=t_full,
                )
            )
    info = dict(tokens=hs.shape[0], examples=len(responses), hidden=w.shape[1], vocab=vocab, device=str(hs.device))
    return rows, info


def table(rows: list[dict], info: dict, model: str) -> str:
    import torch

    from charlit.machine import describe_cpu

    device = info["device"]
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    lines = [
        f"# Top-k + tail teacher cache vs full vocabulary ({model})",
        "",
        f"CPU: {describe_cpu()}; device {device}; torch {torch.__version__}.",
        f"{info['tokens']} response tokens of {info['examples']} assistant turns ({PERSONA} conversations); student "
        f"without, teacher with the constitution as system prompt; H {info['hidden']}, V {info['vocab']}.  "
        f"Losses are token means; shortfall = (full - top-k) / full; gradients w.r.t. the student hidden states.",
        "",
        "| k | β | full loss | top-k loss | shortfall | grad rel. L2 | grad cos | teacher mass mean / min "
        "| cache bytes/token fp32 (fp16 log-probs) | of a full fp16 row | s top-k / full |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['beta']:g} | {r['loss_full']:.5f} | {r['loss_topk']:.5f} | {r['loss_shortfall']:.2%} "
            f"| {r['grad_rel_l2']:.4f} | {r['grad_cos']:.5f} | {r['mass_mean']:.4f} / {r['mass_min']:.4f} "
            f"| {r['bytes_fp32']} ({r['bytes_fp16']}) | {r['bytes_fp32'] / r['bytes_full']:.2%} of {r['bytes_full']} "
            f"| {r['s_topk']:.2f} / {r['s_full']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", choices=["default", "tiny"], help="tiny: random 2-layer dry run")
    ap.add_argument("--tokens", type=int, default=512, help="response tokens scored (default 512)")
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="comma list of k")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the checkout's charlit
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load(args.model, device)
    name = "tiny random model" if args.model == "tiny" else "SmolLM2-135M-Instruct"
    rows, info = measure(model, tokenizer, args.tokens, tuple(int(k) for k in args.ks.split(",")))
    text = table(rows, info, name)
    print(text, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
