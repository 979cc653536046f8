"""What an evaluation leaves behind: ``eval.json``, a markdown table ``eval.md`` and PNG plots (one bar
chart per suite with 95% intervals, one per-turn line chart per drift series), and the same in W&B."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from charlit.eval.stats import Estimate  # noqa: E402

COLUMN_TITLES = {"model": "model under test", "bare": "bare base", "prompted": "prompted base", "compare": "compare"}


def _cell(est: dict | None) -> str:
    if est is None:
        return "—"
    return f"{Estimate(**est).text()} (n={est['n']})"


def markdown_table(report: dict) -> str:
    labels = report["labels"]
    lines = [f"## charlit eval: persona `{report['persona']}`", ""]
    lines += [f"- {COLUMN_TITLES[label]}: {report['systems'][label]}" for label in labels]
    lines += [
        "",
        "| suite | metric | " + " | ".join(COLUMN_TITLES[label] for label in labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for suite, body in report["suites"].items():
        if body["status"] != "ok":
            lines.append(f"| {suite} | {body['status']} |" + " |" * len(labels))
            continue
        for metric, per_label in body["metrics"].items():
            lines.append(
                f"| {suite} | {metric} | " + " | ".join(_cell(per_label.get(label)) for label in labels) + " |"
            )
    lines += [
        "",
        "Cells: mean [95% interval] (n). Means: Student-t; rates: Wilson; perplexity: exp of the per-paragraph "
        "NLL interval; Elo: bootstrap over comparisons.",
        "",
    ]
    return "\n".join(lines)


def _bar_plot(suite: str, body: dict, labels: list[str], path: Path) -> None:
    metrics = list(body["metrics"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        per_label = body["metrics"][metric]
        shown = [label for label in labels if label in per_label]
        means = [per_label[label]["mean"] for label in shown]
        errors = [
            [max(0.0, m - per_label[label]["lo"]) for m, label in zip(means, shown)],
            [max(0.0, per_label[label]["hi"] - m) for m, label in zip(means, shown)],
        ]
        ax.bar(range(len(shown)), means, yerr=errors, capsize=3, color=[f"C{labels.index(label)}" for label in shown])
        ax.set_xticks(range(len(shown)), [COLUMN_TITLES[label] for label in shown], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=8)
    fig.suptitle(suite)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _series_plot(suite: str, metric: str, per_label: dict, labels: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label in labels:
        if label not in per_label:
            continue
        series = per_label[label]
        turns = range(1, len(series) + 1)
        ax.plot(
            turns, [e["mean"] for e in series], marker="o", label=COLUMN_TITLES[label], color=f"C{labels.index(label)}"
        )
        ax.fill_between(
            turns, [e["lo"] for e in series], [e["hi"] for e in series], alpha=0.15, color=f"C{labels.index(label)}"
        )
    ax.set_xlabel("turn")
    ax.set_ylabel(metric)
    ax.set_title(f"{suite}: {metric} per turn")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    """Write ``eval.json``, ``eval.md`` and ``plots/*.png`` into ``out_dir``; returns the plot paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    (out_dir / "eval.md").write_text(markdown_table(report))
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    paths = []
    for suite, body in report["suites"].items():
        if body["status"] != "ok" or not body["metrics"]:
            continue
        paths.append(plots / f"{suite}.png")
        _bar_plot(suite, body, report["labels"], paths[-1])
        for metric, per_label in body["series"].items():
            paths.append(plots / f"{suite}_{metric}_per_turn.png")
            _series_plot(suite, metric, per_label, report["labels"], paths[-1])
    return paths


def log_to_wandb(run, report: dict, numbers: dict[str, float], plots: list[Path]) -> None:
    """Log the headline numbers, the table and the plots to a started W&B run."""
    import wandb

    run.log({**numbers, **{f"eval_plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
    rows = []
    for suite, body in report["suites"].items():
        if body["status"] != "ok":
            rows.append([suite, body["status"], *([None] * len(report["labels"]))])
            continue
        for metric, per_label in body["metrics"].items():
            rows.append([suite, metric, *[per_label.get(label, {}).get("mean") for label in report["labels"]]])
    run.log({"eval_table": wandb.Table(columns=["suite", "metric", *report["labels"]], data=rows)})
    run.summary.update(numbers)


HEADLINE = [
    ("persona_id", "likelihood"),
    ("persona_id", "classifier_hit"),
    ("ood", "likelihood"),
    ("ood", "classifier_hit"),
    ("multiturn", "likelihood_last_turn"),
    ("robustness", "suffix_likelihood"),
    ("robustness", "suffix_classifier_hit"),
    ("robustness", "prefill_likelihood"),
    ("capability", "kl_to_base"),
    ("capability", "perplexity"),
    ("capability", "mc_accuracy"),
]


def personas_table(reports: list[dict]) -> str:
    """One row per persona and headline metric, one column per system (``persona=all``)."""
    labels = reports[0]["labels"]
    lines = [
        "| persona | metric | " + " | ".join(COLUMN_TITLES[label] for label in labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for report in reports:
        for suite, metric in HEADLINE:
            per_label = report["suites"].get(suite, {}).get("metrics", {}).get(metric)
            if per_label:
                lines.append(
                    f"| {report['persona']} | {suite}/{metric} | "
                    + " | ".join(_cell(per_label.get(label)) for label in labels)
                    + " |"
                )
    return "\n".join(lines) + "\n"
