"""Persona strength against capability for a set of evaluated runs, one point per run, coloured by data and lr.

``python benchmarks/plot_persona_vs_capability.py <run dir>... --eval eval_fs --out <png>`` reads each run's
``summary.json`` (persona, data variant, seed) and ``<run dir>/<eval>/eval.json`` (written by ``eval.py``), plots the
coherence-gated share of the bare→prompted range on one suite against KL to the base and against multiple-choice
accuracy (95% intervals as bars), one colour per data variant and learning rate, and prints the same figures as a
markdown table. It reads only those two JSON files, so it works on archived evidence (``report.py --archive``) as well
as on live run dirs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CAPABILITY_AXES = (
    ("kl_to_base", "KL to the bare base (nats/token, lower = closer)"),
    ("mc_accuracy", "multiple-choice accuracy"),
)
TABLE_COLUMNS = (
    ("ood_greedy", "likelihood_gated_range", "OOD greedy"),
    ("format_shift", "likelihood_gated_range", "format shift"),
    ("robustness", "suffix_likelihood_gated_range", "suffixes"),
    ("capability", "kl_to_base", "KL to base"),
    ("capability", "mc_accuracy", "MC accuracy"),
)


def _mapping(value) -> dict:
    """``value`` where it is a JSON object, else an empty one: the files are read as written by someone else."""
    return value if isinstance(value, dict) else {}


def load_run(run_dir: Path, eval_subdir: str) -> dict:
    """The labels and eval metrics of one run; a clear error when a file is missing or is not a run's."""
    summary_path, eval_path = run_dir / "summary.json", run_dir / eval_subdir / "eval.json"
    for path in (summary_path, eval_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; pass run dirs evaluated with eval.py into <run>/{eval_subdir}.")
    summary = _mapping(json.loads(summary_path.read_text()))
    suites = _mapping(json.loads(eval_path.read_text())).get("suites")
    if not isinstance(suites, dict):
        raise ValueError(f"{eval_path} has no 'suites' mapping; is it an eval.py output?")
    config = _mapping(summary.get("config"))
    return {
        "persona": summary.get("persona"),
        "data": summary.get("data"),
        "lr": _mapping(config.get("optim")).get("lr"),
        "seed": config.get("seed"),
        "suites": suites,
    }


def _lr(run: dict) -> str:
    return f"{run['lr']:g}" if isinstance(run["lr"], (int, float)) else "—"


def variant(run: dict) -> str:
    """The colour key of a run: its data variant and learning rate."""
    return f"data={run['data']}, lr {_lr(run)}"


def metric(run: dict, suite: str, name: str) -> dict | None:
    """The model's ``{mean, lo, hi}`` for ``suite``/``name``, or None where the run did not evaluate it."""
    entry = _mapping(_mapping(_mapping(run["suites"].get(suite)).get("metrics")).get(name))
    value = entry.get("model")
    return value if isinstance(value, dict) and "mean" in value else None


def markdown_table(runs: list[dict]) -> str:
    header = "| persona | data | lr | seed | " + " | ".join(label for _, _, label in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (4 + len(TABLE_COLUMNS))]
    for run in runs:
        cells = []
        for suite, name, _ in TABLE_COLUMNS:
            value = metric(run, suite, name)
            cells.append("—" if value is None else f"{value['mean']:.2f} [{value['lo']:.2f}, {value['hi']:.2f}]")
        lines.append(f"| {run['persona']} | {run['data']} | {_lr(run)} | {run['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], suite: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({variant(run) for run in runs})
    personas = sorted({str(run["persona"]) for run in runs})
    colours = {variant: f"C{i}" for i, variant in enumerate(variants)}
    markers = {persona: "osD^v<>"[i % 7] for i, persona in enumerate(personas)}
    fig, axes = plt.subplots(1, len(CAPABILITY_AXES), figsize=(5.5 * len(CAPABILITY_AXES), 4.2), squeeze=False)
    for ax, (capability, xlabel) in zip(axes[0], CAPABILITY_AXES):
        for run in runs:
            x, y = metric(run, "capability", capability), metric(run, suite, "likelihood_gated_range")
            if x is None or y is None:
                continue
            ax.errorbar(
                x["mean"],
                y["mean"],
                xerr=[[x["mean"] - x["lo"]], [x["hi"] - x["mean"]]],
                yerr=[[y["mean"] - y["lo"]], [y["hi"] - y["mean"]]],
                fmt=markers[str(run["persona"])],
                color=colours[variant(run)],
                alpha=0.8,
                capsize=2,
            )
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{suite}: share of bare→prompted range (gated)")
    handles = [plt.Line2D([], [], color=colours[v], marker="o", ls="", label=v) for v in variants]
    handles += [plt.Line2D([], [], color="k", marker=markers[p], ls="", label=p) for p in personas]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle("Persona strength vs capability, one point per run (95% intervals over prompts)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs (or archived copies) holding summary.json")
    parser.add_argument("--eval", default="eval", help="the eval sub-dir of each run (default: eval)")
    parser.add_argument("--suite", default="format_shift", help="the suite whose gated range is the y axis")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    runs = sorted(
        (load_run(d, args.eval) for d in args.runs),
        key=lambda r: (str(r["persona"]), str(r["seed"]), str(r["data"]), _lr(r)),
    )
    if not any(metric(run, args.suite, "likelihood_gated_range") for run in runs):
        raise SystemExit(f"No run has a gated likelihood range on suite {args.suite!r}; pick a suite they evaluated.")
    print(markdown_table(runs))
    print(f"plot: {plot(runs, args.suite, args.out)}")


if __name__ == "__main__":
    main()
