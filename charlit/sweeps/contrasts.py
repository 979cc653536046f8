"""Paired contrasts between a study's arms: each arm minus a reference arm, cell by cell.

Every arm of a method study runs on the same (persona, seed) cells and is evaluated on the same prompts, so the
question "is arm A ahead of arm B?" is sharper asked cell by cell than by comparing two pooled intervals: the
persona's and the prompts' share of the spread cancels in the difference. A contrast is the mean over matched cells
of ``A − B`` for one job-level figure, with a t interval over cells (the prompts held fixed: the interval speaks for
these prompts, not for a new draw of them) and the count of cells where A is above B. With a handful of cells and
several contrasts read at once, an interval that just clears zero is a lead worth re-running, not a finding.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

REFERENCE = "self_distill"
"""The default reference arm: the cheapest (it generates no data) and the product's default method."""
# column title -> job-level figure from the job's summary row
FIGURES = {
    "OOD gated range": "eval/ood/likelihood_gated_range",
    "in-dist. gated range": "eval/persona_id/likelihood_gated_range",
    "format shift gated range": "eval/format_shift/likelihood_gated_range",
    "attack gated range": "eval/robustness/suffix_likelihood_gated_range",
    "KL to base": "eval/capability/kl_to_base",
    "MC accuracy": "eval/capability/mc_accuracy",
    "perplexity": "eval/capability/perplexity",
}


def _value(job: dict, metric: str) -> float | None:
    value = job["row"].get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def t_half_width(values: np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``values``; nan from fewer than two."""
    if len(values) < 2:
        return float("nan")
    return float(scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def paired_difference(differences: list[float]) -> dict:
    """Mean of per-cell differences, its 95% t interval over cells (none from one cell) and the cells above 0."""
    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    half = t_half_width(d)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "above": int((d > 0).sum()), "cells": len(d)}


def paired_contrasts(jobs: list[dict], reference: str = REFERENCE) -> list[dict]:
    """One row per arm other than ``reference``: for every figure in :data:`FIGURES`, the paired difference over
    the (persona, seed) cells both arms ran and evaluated. Empty when the reference arm did not run."""
    cells: dict[str, dict[tuple, dict]] = {}
    for job in jobs:
        if job.get("eval"):
            cells.setdefault(job["arm"], {})[(str(job["persona"]), str(job["seed"]))] = job
    if reference not in cells:
        return []
    base = cells[reference]
    rows = []
    for arm, arm_cells in cells.items():
        if arm == reference:
            continue
        row = {"arm": arm, "reference": reference}
        for title, metric in FIGURES.items():
            pairs = [(_value(job, metric), _value(base[key], metric)) for key, job in arm_cells.items() if key in base]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            row[title] = paired_difference(diffs) if diffs else None
        rows.append(row)
    return rows


def _cell(value: dict | None) -> str:
    if value is None:
        return ""
    digits = ".2f" if abs(value["mean"]) < 10 else ".1f"
    interval = "" if math.isnan(value["lo"]) else f" [{value['lo']:+{digits}}, {value['hi']:+{digits}}]"
    return f"{value['mean']:+{digits}}{interval} ({value['above']}/{value['cells']})"


def markdown(rows: list[dict]) -> str:
    """A table of :func:`paired_contrasts` rows: mean difference [95% interval over cells] (cells above 0 / cells)."""
    if not rows:
        return ""
    titles = list(FIGURES)
    lines = [
        "| arm − " + rows[0]["reference"] + " | " + " | ".join(titles) + " |",
        "|" + "---|" * (len(titles) + 1),
    ]
    lines += ["| " + row["arm"] + " | " + " | ".join(_cell(row[t]) for t in titles) + " |" for row in rows]
    return "\n".join(lines) + "\n"
