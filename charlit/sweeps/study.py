"""Pool a method study's jobs by arm: persona ranges over prompts and seeds, compute, capability, and two plots.

A job belongs to an arm when its Hydra overrides carry ``+arm=<name>`` (``conf/arm/``; ``experiment=method_study``
sweeps them). A multi-stage arm (OCT's recipe) is one job: its numbers are its last stage's evaluation, its compute
the sum of its stages (data generation included), its learning curve every stage's validations in order.

Intervals (95%), over prompts *and* seeds, because the eval prompts are the same for every job while the seeds are
independent:

* a persona range ``(m − b) / (p − b)`` (0 = bare base, 1 = constitution-prompted base) is pooled per persona from
  the per-prompt scores each job's ``eval/eval.json`` keeps: a hierarchical percentile bootstrap resamples the arm's
  jobs (seeds), then the prompts (paired across the model, bare and prompted scores, and shared by the jobs); the
  arm's figure is the mean of its personas' ranges;
* any other number (capability, looping, FLOPs) is the mean of the job means, with a half-width that adds in
  quadrature the spread between jobs (a t interval over jobs) and the prompt-sampling error every job shares (the
  jobs' mean 95% half-width).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from charlit.sweeps import contrasts

ARM_OVERRIDE = "+arm="
VARIANT_GROUPS = ("data", "teacher")
"""Config groups whose command-line choice makes a job a variant of its arm (see :func:`arm_label`)."""
# column -> (eval suite, per-prompt key): ranges pooled over prompts and seeds
RANGES = {
    "ood_gated": ("ood", "likelihood_gated"),
    "ood_raw": ("ood", "likelihood"),
    "ood_greedy_gated": ("ood_greedy", "likelihood_gated"),
    "ood_greedy_raw": ("ood_greedy", "likelihood"),
    "id_gated": ("persona_id", "likelihood_gated"),
    "format_shift_gated": ("format_shift", "likelihood_gated"),
    "attack_gated": ("robustness", "suffix_likelihood_gated"),
}
HEADLINE = "ood_gated"  # the y axis of the curves' end points and of the Pareto plot
# column -> (summary metric, True when higher is better)
CAPABILITY = {
    "kl_to_base": ("eval/capability/kl_to_base", False),
    "mc_accuracy": ("eval/capability/mc_accuracy", True),
    "perplexity": ("eval/capability/perplexity", False),
}
POOLED = {
    "looping_ood_greedy": "eval/ood_greedy/looping",
    "looping_ood": "eval/ood/looping",
    **{name: metric for name, (metric, _) in CAPABILITY.items()},
}
CURVE_Y = "val/persona_progress_gated"


def arm_label(overrides: list[str]) -> str | None:
    """The ``+arm=`` override, with any ``teacher=`` / ``data=`` override beside it (``self_distill data=robust``):
    a variant of an arm pools on its own row, never with the arm as designed."""
    arms = [o[len(ARM_OVERRIDE) :] for o in overrides if o.startswith(ARM_OVERRIDE)]
    if not arms:
        return None
    variants = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in VARIANT_GROUPS]
    return " ".join([arms[0], *sorted(variants)])


def arm_of(run_dir: Path, root: Path) -> tuple[str, Path] | None:
    """``(arm label, job dir)`` from the nearest ``.hydra/overrides.yaml`` at or above ``run_dir`` (not above
    ``root``); see :func:`arm_label`."""
    run_dir, root = Path(run_dir).resolve(), Path(root).resolve()
    for directory in (run_dir, *run_dir.parents):
        if not directory.is_relative_to(root):
            return None
        path = directory / ".hydra" / "overrides.yaml"
        if path.is_file():
            label = arm_label([str(o) for o in yaml.safe_load(path.read_text()) or []])
            return (label, directory) if label else None
    return None


def study_jobs(rows: list[dict], root: Path) -> list[dict]:
    """One entry per arm job: its last stage's row, every stage's row in order (for curves and compute), its arm."""
    stages: dict[Path, list[dict]] = defaultdict(list)
    arms: dict[Path, str] = {}
    for row in rows:
        found = arm_of(Path(row["run_dir"]), root)
        if found:
            arms[found[1]] = found[0]
            stages[found[1]].append(row)
    jobs = []
    for job_dir, job_rows in sorted(stages.items()):
        job_rows = sorted(job_rows, key=lambda r: Path(r["run_dir"]).name)
        last = job_rows[-1]
        report = Path(last["run_dir"]) / "eval" / "eval.json"
        staged = Path(last["run_dir"]).resolve() != job_dir
        if staged and not (job_dir / "recipe.json").is_file():  # a recipe still running: its last stage is to come
            report = job_dir / "recipe.json"
        jobs.append(
            {
                "arm": arms[job_dir],
                "persona": last.get("persona"),
                "seed": last.get("seed"),
                "row": last,
                "stages": job_rows,
                "eval": json.loads(report.read_text()) if report.is_file() else None,
                "flops": sum(float(r.get("compute/flops") or 0.0) for r in job_rows),
                "wall_time_s": sum(float(r.get("wall_time_s") or 0.0) for r in job_rows),
            }
        )
    return jobs


def _per_prompt(job: dict, suite: str, key: str) -> dict[str, np.ndarray] | None:
    body = ((job["eval"] or {}).get("suites") or {}).get(suite) or {}
    values = (body.get("per_prompt") or {}).get(key) or {}
    if not all(label in values for label in ("model", "bare", "prompted")):
        return None
    return {label: np.asarray(values[label], dtype=float) for label in ("model", "bare", "prompted")}


def _bare_value(job: dict, metric: str) -> float | None:
    """The bare base's mean for ``eval/<suite>/<name>`` from the job's eval report (sweep rows keep the model's)."""
    _, suite, name = metric.split("/", 2)
    body = ((job["eval"] or {}).get("suites") or {}).get(suite) or {}
    value = ((body.get("metrics") or {}).get(name) or {}).get("bare", {}).get("mean")
    return None if value is None else float(value)


def pooled_range(per_persona: list[list[dict[str, np.ndarray]]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over personas of each persona's range, pooled over its jobs (seeds) and prompts; percentile interval
    from a hierarchical bootstrap (jobs, then prompts shared by the jobs and paired across the three systems)."""
    rng = np.random.default_rng(seed)

    def persona_range(jobs: list[dict[str, np.ndarray]], job_idx, prompt_idx) -> float:
        picked = [jobs[j] for j in job_idx]
        m = np.mean([job["model"][prompt_idx].mean() for job in picked])
        b = np.mean([job["bare"][prompt_idx].mean() for job in picked])
        p = np.mean([job["prompted"][prompt_idx].mean() for job in picked])
        return (m - b) / (p - b) if p != b else float("nan")

    per_persona = [jobs for jobs in per_persona if jobs]
    if not per_persona:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "jobs": 0}
    for jobs in per_persona:
        if len({len(job["model"]) for job in jobs}) != 1:
            raise ValueError("pooled_range needs the same prompts in every job of a persona (check the eval sizes).")
    point = float(np.mean([persona_range(jobs, range(len(jobs)), slice(None)) for jobs in per_persona]))
    draws = []
    for _ in range(n_boot):
        ranges = []
        for jobs in per_persona:
            job_idx = rng.integers(0, len(jobs), len(jobs))
            n = len(jobs[0]["model"])
            ranges.append(persona_range(jobs, job_idx, rng.integers(0, n, n)))
        if not any(math.isnan(r) for r in ranges):
            draws.append(np.mean(ranges))
    lo, hi = np.quantile(draws, [0.025, 0.975]) if draws else (float("nan"), float("nan"))
    return {"mean": point, "lo": float(lo), "hi": float(hi), "jobs": sum(len(j) for j in per_persona)}


def pooled_mean(means: list[float], half_widths: list[float | None]) -> dict:
    """Mean of job means; half-width = t interval over jobs ⊕ the jobs' mean 95% half-width (shared prompts)."""
    values = np.asarray([m for m in means if m is not None and not math.isnan(m)], dtype=float)
    if not len(values):
        return {"mean": float("nan"), "half": float("nan"), "jobs": 0}
    between = contrasts.t_half_width(values) if len(values) > 1 else 0.0
    within = [h for h in half_widths if h is not None and not math.isnan(h)]
    shared = float(np.mean(within)) if within else 0.0
    return {"mean": float(values.mean()), "half": math.hypot(between, shared), "jobs": len(values)}


def arm_table(jobs: list[dict]) -> list[dict]:
    """One row per arm, in order of first appearance: pooled ranges, capability, looping and compute."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        by_arm[job["arm"]].append(job)
    table = []
    for arm, arm_jobs in by_arm.items():
        evaluated = [j for j in arm_jobs if j["eval"]]
        personas = sorted({str(j["persona"]) for j in evaluated})
        row = {
            "arm": arm,
            "method": arm_jobs[-1]["row"].get("method"),
            "personas": ",".join(personas),
            "jobs": len(arm_jobs),
            "evaluated": len(evaluated),
        }
        for column, (suite, key) in RANGES.items():
            per_persona = [
                [v for j in evaluated if str(j["persona"]) == persona if (v := _per_prompt(j, suite, key))]
                for persona in personas
            ]
            row[column] = pooled_range(per_persona)
        for column, metric in POOLED.items():
            row[column] = pooled_mean(
                [j["row"].get(metric) for j in evaluated], [j["row"].get(f"{metric}_ci95") for j in evaluated]
            )
            bare = [v for j in evaluated if (v := _bare_value(j, metric)) is not None]
            row[f"{column}_bare"] = float(np.mean(bare)) if bare else float("nan")
        finished = evaluated or arm_jobs  # an unfinished job's compute is not the arm's
        row["flops"] = pooled_mean([j["flops"] for j in finished], [])
        row["wall_time_s"] = pooled_mean([j["wall_time_s"] for j in finished], [])
        table.append(row)
    return table


def _cell(value) -> str:
    if isinstance(value, dict) and "lo" in value:
        return "" if math.isnan(value["mean"]) else f"{value['mean']:.2f} [{value['lo']:.2f}, {value['hi']:.2f}]"
    if isinstance(value, dict):
        if math.isnan(value["mean"]):
            return ""
        digits = ".3g" if abs(value["mean"]) >= 1e3 or abs(value["mean"]) < 1e-2 else ".3f"
        return f"{value['mean']:{digits}} ± {value['half']:{digits}}"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return str(value)


COLUMNS = (
    ("arm", "arm"),
    ("evaluated", "jobs"),
    ("personas", "personas"),
    ("flops", "training FLOPs"),
    ("ood_gated", "OOD gated range"),
    ("ood_raw", "OOD raw range"),
    ("ood_greedy_gated", "OOD greedy gated"),
    ("id_gated", "in-dist. gated"),
    ("format_shift_gated", "format shift gated"),
    ("attack_gated", "attack gated"),
    ("looping_ood_greedy", "greedy OOD looping"),
    ("kl_to_base", "KL to base"),
    ("mc_accuracy", "MC accuracy"),
    ("perplexity", "perplexity"),
)


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |" for row in table]
    if table:
        bare = table[0]
        cells = ["0" if key in RANGES else _cell(bare.get(f"{key}_bare", "")) for key, _ in COLUMNS[1:]]
        lines.append("| bare base | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _curve(job: dict) -> list[tuple[float, float]]:
    """A job's validations as (training FLOPs, gated persona progress). For a recipe only its first stage's: a later
    stage validates against its own starting model (the previous stage's), a different 0 of the scale."""
    row = job["stages"][0]
    history = json.loads((Path(row["run_dir"]) / "summary.json").read_text()).get("val_history") or []
    return [(r["compute/flops"], r[CURVE_Y]) for r in history if "compute/flops" in r and CURVE_Y in r]


def plot_curves(jobs: list[dict], path: Path) -> Path | None:
    """Gated persona progress (validation) against cumulative training FLOPs: thin lines per job, bold arm means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = list(dict.fromkeys(j["arm"] for j in jobs))
    drawn = False
    for i, arm in enumerate(arms):
        curves = [c for j in jobs if j["arm"] == arm if (c := _curve(j))]
        colour = colours[i % len(colours)]
        for curve in curves:
            ax.plot(*zip(*curve), color=colour, alpha=0.25, linewidth=0.8)
        length = min(len(c) for c in curves) if curves else 0
        if length:
            mean = [(np.mean([c[k][0] for c in curves]), np.mean([c[k][1] for c in curves])) for k in range(length)]
            ax.plot(*zip(*mean), color=colour, marker="o", linewidth=2, label=f"{arm} (mean of {len(curves)})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlim(left=0)  # linear: every run starts at 0 FLOPs (a log axis would drop that point)
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(1, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("cumulative training FLOPs (data generation, sampling, scoring, training)")
    ax.set_ylabel("validation persona progress, gated (0 bare, 1 prompted)")
    ax.set_title("persona strength vs compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]], higher_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any(
            (x2 >= x if higher_x_better else x2 <= x) and y2 >= y and (x2, y2) != (x, y)
            for k, (x2, y2) in enumerate(points)
            if k != i
        )
        if not beaten:
            front.append(i)
    return front


def plot_pareto(table: list[dict], path: Path) -> Path | None:
    """OOD gated persona range against each capability number, error bars both ways, the Pareto front circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if not math.isnan(r[HEADLINE]["mean"])]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(CAPABILITY), figsize=(5 * len(CAPABILITY), 4.5), squeeze=False)
    for ax, (column, (_, higher)) in zip(axes[0], CAPABILITY.items()):
        points = [(r[column]["mean"], r[HEADLINE]["mean"]) for r in rows]
        front = set(pareto_front(points, higher))
        for i, r in enumerate(rows):
            y = r[HEADLINE]
            ax.errorbar(
                r[column]["mean"],
                y["mean"],
                xerr=r[column]["half"],
                yerr=[[y["mean"] - y["lo"]], [y["hi"] - y["mean"]]],
                fmt="o",
                capsize=3,
                markersize=9 if i in front else 6,
                markeredgecolor="black" if i in front else None,
                label=r["arm"],  # a legend, not annotations: arms close in both numbers would print over each other
            )
        if not math.isnan(rows[0][f"{column}_bare"]):
            ax.axvline(rows[0][f"{column}_bare"], color="grey", linestyle="--", linewidth=0.8, label="bare base")
        ax.legend(fontsize=7)
        ax.set_xlabel(f"{column} ({'higher' if higher else 'lower'} is better)")
        ax.set_ylabel("OOD persona range, gated")
    fig.suptitle("persona strength vs capability retention (outlined: Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _flat(row: dict) -> dict:
    """A table row for CSV: every estimate as its mean plus ``_lo``/``_hi`` (ranges) or ``_ci95`` (half-width)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out[key] = value["mean"]
            if "lo" in value:
                out[f"{key}_lo"], out[f"{key}_hi"] = value["lo"], value["hi"]
            else:
                out[f"{key}_ci95"] = value["half"]
        else:
            out[key] = value
    return out


def write_study(rows: list[dict], sweep_dir: Path, out_dir: Path) -> dict | None:
    """``study.md``, ``study.csv``, ``study_curves.png`` and ``study_pareto.png`` for a sweep over ``+arm``;
    None when no job names an arm."""
    jobs = study_jobs(rows, sweep_dir)
    if not jobs:
        return None
    table = arm_table(jobs)
    personas = sorted({str(j["persona"]) for j in jobs})
    # Pooled rows mix personas wherever arms cover different ones; one table per persona compares like with like.
    by_persona = (
        {p: arm_table([j for j in jobs if str(j["persona"]) == p]) for p in personas} if len(personas) > 1 else {}
    )
    flat = [_flat(row) for row in table]
    with open(out_dir / "study.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    plots = [
        p
        for p in (plot_curves(jobs, out_dir / "study_curves.png"), plot_pareto(table, out_dir / "study_pareto.png"))
        if p
    ]
    text = (
        f"# Method study: {len(jobs)} jobs, {len(table)} arms\n\n"
        "Persona figures: share of the bare→prompted range (0 = bare base, 1 = constitution-prompted base) from the "
        "likelihood judge, coherence-gated unless marked raw, pooled over personas, seeds and prompts with 95% "
        "bootstrap intervals; other numbers: mean ± 95% half-width over jobs and prompts "
        "(`charlit/sweeps/study.py`).\n\n"
        + markdown(table)
        + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
        + "".join(f"\n## Persona `{p}` alone\n\n" + markdown(rows) for p, rows in by_persona.items())
    )
    paired = contrasts.paired_contrasts(jobs)
    if paired:
        text += (
            f"\n## Paired against `{contrasts.REFERENCE}`\n\n"
            "Each arm minus the reference on the same persona, seed and prompts: mean difference [95% t interval "
            "over the matched cells] (cells where the arm is above / matched cells); "
            "`charlit/sweeps/contrasts.py`.\n\n" + contrasts.markdown(paired)
        )
    (out_dir / "study.md").write_text(text)
    return {
        "table": table,
        "by_persona": by_persona,
        "paired": paired,
        "markdown": out_dir / "study.md",
        "csv": out_dir / "study.csv",
        "plots": plots,
    }
