"""Aggregate a multirun's ``summary.json`` files into ``report.csv``, ``report.md`` and plots.

One row per job (method, teacher, data, persona, seed, its compute and the headline metrics); a metric ``m`` with a
95% interval carries it as ``m_ci95`` (half-width), which the plots draw as error bars. Headline metrics are the
held-out validation every method logs (``val/*``) and, when the run evaluated itself (``eval=quick``), every
``eval/*`` number in its summary. Compute is the run's training FLOPs (``compute/flops``, see
:mod:`charlit.compute`) and wall time; a stage of a multi-stage recipe also gets ``compute/recipe_flops``, its
recipe's FLOPs up to and including it. One more plot draws ``val/persona_progress`` against those FLOPs from each
job's validation history.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from charlit.sweeps.study import write_study

AXES = ("method", "teacher", "data", "persona", "seed")
VAL_HEADLINES = (
    "val/divergence_start",
    "val/divergence_end",
    "val/divergence_change",
    "val/persona_gain_end",
    "val/persona_progress_end",
    "val/persona_progress_gated_end",
    "val/looping_frac_end",
    "val/looping_frac_bare",
)
RUN_FIELDS = ("steps", "wall_time_s", "peak_rss_mb")
CURVE = ("compute/flops", "val/persona_progress")  # x, y of the learning-curve plot
PLOTTED = ("val/divergence_end", "val/persona_progress_end", "val/persona_progress_gated_end", "val/looping_frac_end")


def _teacher_label(config: dict, summary: dict) -> str:
    teacher = config.get("teacher", {}) or {}
    name = str(teacher.get("name", summary.get("teacher", "?")))
    if name == "amplified" and "alpha" in teacher:
        return f"amplified(α={teacher['alpha']:g})"
    return name


def job_row(summary_path: Path) -> dict:
    summary = json.loads(summary_path.read_text())
    config = summary.get("config", {})
    metrics = summary.get("metrics", {})
    job = summary_path.parent.name
    row = {
        "job": job.split("_", 1)[0] if job.split("_", 1)[0].isdigit() else job,  # Hydra's job number
        "method": summary.get("method"),
        "teacher": _teacher_label(config, summary),
        "data": summary.get("data"),
        "persona": summary.get("persona"),
        "seed": config.get("seed"),
        **{f: summary.get(f) for f in RUN_FIELDS},
    }
    if "compute/flops" in metrics:
        row["compute/flops"] = metrics["compute/flops"]
        before = _recipe_flops_before(summary_path.parent)
        if before is not None:
            row["compute/recipe_flops"] = before + metrics["compute/flops"]
    for key in VAL_HEADLINES:
        if key in metrics:
            row[key] = metrics[key]
            if f"{key}_ci95" in metrics:
                row[f"{key}_ci95"] = metrics[f"{key}_ci95"]
    for key in sorted(metrics):  # the model under test's eval numbers (reference systems' are in its eval/)
        if key.startswith("eval/") and not any(key.endswith(f"_{ref}") for ref in ("bare", "prompted", "compare")):
            row[key] = metrics[key]
    row["run_dir"] = str(summary_path.parent)
    return row


def _recipe_flops_before(run_dir: Path) -> float | None:
    """The training FLOPs of the recipe stages before ``run_dir`` (``<i>_<stage>`` beside the recipe's
    ``recipe.json``); None for a run outside a recipe."""
    try:
        stages = json.loads((run_dir.parent / "recipe.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return None
    names = [f"{i}_{stage['name']}" for i, stage in enumerate(stages)]
    if run_dir.name not in names:
        return None
    earlier = stages[: names.index(run_dir.name)]
    return float(sum((stage.get("compute") or {}).get("flops", 0.0) for stage in earlier))


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per finished job under ``sweep_dir`` (any depth), ordered by job directory."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory; pass a multirun dir (e.g. multirun/<date>).")
    paths = sorted(sweep_dir.glob("**/summary.json"))
    return [job_row(p) for p in paths]


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(rows: list[dict], columns: list[str]) -> str:
    shown = [c for c in columns if c not in ("run_dir",) and not c.endswith("_ci95")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = []
        for c in shown:
            cell = _fmt(row.get(c))
            if cell and row.get(f"{c}_ci95") is not None and not math.isnan(row[f"{c}_ci95"]):
                cell += f" ± {_fmt(row[f'{c}_ci95'])}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(row: dict, varying: list[str]) -> str:
    return " · ".join(str(row.get(a)) for a in varying) or row["job"]


def _plot(rows: list[dict], metric: str, path: Path) -> Path | None:
    """Bars per job (error bars = 95% intervals) and, when two axes vary, a heatmap of their means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not have:
        return None
    varying = [a for a in AXES if len({str(r.get(a)) for r in rows}) > 1]
    grid = varying[:2] if len(varying) >= 2 else []
    fig, axes = plt.subplots(
        1, 2 if grid else 1, figsize=(12 if grid else 7, max(3, 0.45 * len(have) + 1.5)), squeeze=False
    )
    ax = axes[0][0]
    labels = [_label(r, varying) for r in have]
    errors = [r.get(f"{metric}_ci95") or 0.0 for r in have]
    ax.barh(range(len(have)), [r[metric] for r in have], xerr=errors, capsize=3, color="#4C72B0")
    ax.set_yticks(range(len(have)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per job (95% CI where known)")
    if grid:
        ys, xs = sorted({str(r.get(grid[0])) for r in have}), sorted({str(r.get(grid[1])) for r in have})
        cells = [[[] for _ in xs] for _ in ys]
        for r in have:
            cells[ys.index(str(r.get(grid[0])))][xs.index(str(r.get(grid[1])))].append(r[metric])
        means = [[sum(c) / len(c) if c else float("nan") for c in line] for line in cells]
        hax = axes[0][1]
        image = hax.imshow(means, cmap="viridis", aspect="auto")
        hax.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
        hax.set_yticks(range(len(ys)), ys)
        hax.set_xlabel(grid[1])
        hax.set_ylabel(grid[0])
        for i, line in enumerate(means):
            for j, v in enumerate(line):
                if not math.isnan(v):
                    hax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=9)
        fig.colorbar(image, ax=hax)
        hax.set_title(f"{metric}: mean over the other axes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_curves(rows: list[dict], path: Path) -> Path | None:
    """``val/persona_progress`` against cumulative training FLOPs, one line per job (its validation history)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [a for a in AXES if len({str(r.get(a)) for r in rows}) > 1]
    x_key, y_key = CURVE
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for row in rows:
        history = json.loads((Path(row["run_dir"]) / "summary.json").read_text()).get("val_history") or []
        points = [(r[x_key], r[y_key]) for r in history if x_key in r and y_key in r]
        if not points:
            continue
        offset = row["compute/recipe_flops"] - row[x_key] if "compute/recipe_flops" in row else 0.0
        ax.plot([x + offset for x, _ in points], [y for _, y in points], marker="o", label=_label(row, varying))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("training FLOPs (cumulative; recipe stages after the earlier stages)")
    ax.set_ylabel(y_key)
    ax.set_title(f"{y_key} vs compute per job")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> dict:
    """Write report.csv, report.md and one PNG per plotted metric; returns their paths, the rows and columns."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    if not rows:
        raise ValueError(f"No finished jobs (summary.json files) under {sweep_dir}; is it a multirun dir?")
    out_dir = Path(out_dir) if out_dir else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _columns(rows)
    with open(out_dir / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plotted = [m for m in (*PLOTTED, *[c for c in columns if c.startswith("eval/") and not c.endswith("_ci95")][:4])]
    plots = [p for m in plotted if (p := _plot(rows, m, out_dir / f"report_{m.replace('/', '_')}.png"))]
    curves = _plot_curves(rows, out_dir / "report_persona_progress_vs_flops.png")
    plots += [curves] if curves else []
    markdown = f"# Sweep report: {sweep_dir}\n\n{len(rows)} jobs.\n\n" + _markdown(rows, columns)
    markdown += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    study = write_study(rows, sweep_dir, out_dir)
    if study:
        link = study["markdown"].name
        markdown += f"\nArms pooled over personas and seeds, compute curves, Pareto plot: [{link}]({link}).\n"
    (out_dir / "report.md").write_text(markdown)
    return {
        "rows": rows,
        "columns": columns,
        "csv": out_dir / "report.csv",
        "markdown": out_dir / "report.md",
        "plots": plots,
        "study": study,
    }
