"""Dataset cards: counts per stage, filter reasons, a reply-length histogram, three samples, throughput.

Written beside the data as ``card.json`` and ``card.md``, and logged to W&B when a W&B run is active.
"""

from __future__ import annotations

import json
import math


def length_histogram(lengths: list[int], bins: int = 8) -> dict:
    """Equal-width histogram of reply lengths in tokens: ``edges`` (bins + 1 values) and ``counts``."""
    if not lengths:
        return {"edges": [], "counts": []}
    low, high = min(lengths), max(lengths)
    bins = min(bins, high - low + 1)
    width = max(math.ceil((high - low + 1) / bins), 1)
    edges = [low + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for n in lengths:
        counts[min((n - low) // width, bins - 1)] += 1
    return {"edges": edges, "counts": counts}


def build_card(
    name: str,
    key: str,
    data_path: str,
    rows: list[dict],
    stages: dict[str, dict],
    lengths: list[int],
    new_tokens: int,
    seconds: float,
    settings: dict,
    flops: float = 0.0,
) -> dict:
    """``stages`` maps stage name → its counts (``generated``, ``kept``, ``dropped`` by reason, extra figures);
    ``flops``: the generation's FLOP estimate (charlit.compute's rule)."""
    return {
        "dataset": name,
        "key": key,
        "path": data_path,
        "rows": len(rows),
        "stages": stages,
        "reply_tokens": {
            "histogram": length_histogram(lengths),
            "mean": sum(lengths) / len(lengths) if lengths else 0.0,
            "count": len(lengths),
            "values": lengths,
        },
        "generation": {
            "new_tokens": new_tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 else None,
            "flops": flops,
        },
        "samples": rows[:3],
        "settings": settings,
    }


def card_markdown(card: dict) -> str:
    lines = [
        f"# Dataset card: {card['dataset']}",
        "",
        f"- rows: **{card['rows']}**",
        f"- path: `{card['path']}`",
        f"- cache key: `{card['key']}`",
    ]
    gen = card["generation"]
    if gen["new_tokens"]:
        lines.append(
            f"- generation: {gen['new_tokens']} new tokens in {gen['seconds']:.1f} s ({gen['tokens_per_s']} tokens/s)"
        )
    lines += [
        "",
        "## Counts per stage",
        "",
        "| stage | generated | kept | of which trimmed | of which cut at a loop | dropped (reason: count) |",
        "|---|---|---|---|---|---|",
    ]
    for stage, counts in card["stages"].items():
        dropped = ", ".join(f"{r}: {n}" for r, n in counts.get("dropped", {}).items()) or "none"
        lines.append(
            f"| {stage} | {counts.get('generated', 0)} | {counts.get('kept', 0)} | {counts.get('trimmed', 0)} "
            f"| {counts.get('cut_at_loop', 0)} | {dropped} |"
        )
    hist = card["reply_tokens"]["histogram"]
    lines += [
        "",
        f"## Reply length (tokens; mean {card['reply_tokens']['mean']:.1f} over {card['reply_tokens']['count']})",
        "",
    ]
    if hist["counts"]:
        lines += ["| tokens | replies |", "|---|---|"]
        lines += [f"| {lo}–{hi - 1} | {n} |" for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"])]
    else:
        lines.append("(no replies kept)")
    lines += ["", "## Samples", ""]
    for i, row in enumerate(card["samples"], 1):
        lines += [f"### Sample {i}", "", "```json", json.dumps(row, indent=1, ensure_ascii=False), "```", ""]
    lines += [
        "## Settings",
        "",
        "```json",
        json.dumps(card["settings"], indent=1, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def log_card_to_wandb(card: dict, run) -> None:
    """Counts into the W&B run summary (``data/<stage>/...``) and the samples and histogram as tables."""
    import wandb

    run.summary[f"data/{card['dataset']}/rows"] = card["rows"]
    if card["generation"]["tokens_per_s"] is not None:
        run.summary[f"data/{card['dataset']}/tokens_per_s"] = card["generation"]["tokens_per_s"]
    for stage, counts in card["stages"].items():
        run.summary[f"data/{stage}/generated"] = counts.get("generated", 0)
        run.summary[f"data/{stage}/kept"] = counts.get("kept", 0)
        run.summary[f"data/{stage}/trimmed"] = counts.get("trimmed", 0)
        run.summary[f"data/{stage}/cut_at_loop"] = counts.get("cut_at_loop", 0)
        for reason, n in counts.get("dropped", {}).items():
            run.summary[f"data/{stage}/dropped/{reason}"] = n
    samples = wandb.Table(columns=["row"], data=[[json.dumps(r, ensure_ascii=False)] for r in card["samples"]])
    hist = card["reply_tokens"]["histogram"]
    lengths = wandb.Table(
        columns=["from_tokens", "replies"], data=[[e, n] for e, n in zip(hist["edges"], hist["counts"])]
    )
    run.log({f"data/{card['dataset']}/samples": samples, f"data/{card['dataset']}/reply_lengths": lengths})
