"""Point estimates with 95% intervals: Student-t for means, Wilson for proportions, percentile bootstrap,
and Bradley-Terry strengths fitted from pairwise wins."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean with a Student-t interval (a single value or zero spread gives a zero-width interval)."""
    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n)


def wilson(successes: int, n: int, level: float = LEVEL) -> Estimate:
    """A proportion with the Wilson score interval."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    z = float(sps.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, min(p, centre - half), max(p, centre + half), n)  # exact bounds at p = 0 or 1, despite rounding


def bootstrap_ci(
    data: Sequence, statistic: Callable[[list], float], n_boot: int = 1000, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """``statistic(data)`` with a percentile interval over ``n_boot`` resamples of ``data`` (with replacement)."""
    data = list(data)
    if not data:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    point = float(statistic(data))
    draws = [statistic([data[i] for i in rng.integers(0, len(data), len(data))]) for _ in range(n_boot)]
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(point, float(lo), float(hi), len(data))


def bradley_terry(
    comparisons: Sequence[tuple[int, int]], num_items: int, iters: int = 2000, prior: float = 0.5
) -> np.ndarray:
    """Log-strengths ``θ`` (mean 0) maximising ``Π σ(θ_winner − θ_loser)`` over ``(winner, loser)`` pairs.

    Hunter's MM algorithm. ``prior`` adds that many virtual wins and losses between every item and a
    pseudo-item of strength 1, so an item that never lost (or never won) stays finite.
    """
    wins = np.zeros((num_items, num_items))
    for w, l in comparisons:
        wins[w, l] += 1
    games = wins + wins.T
    total_wins = wins.sum(1) + prior
    p = np.ones(num_items)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(1) + 2 * prior / (p + 1)
        new = total_wins / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < 1e-10:
            p = new
            break
        p = new
    theta = np.log(p)
    return theta - theta.mean()


ELO_SCALE = 400 / math.log(10)


def bradley_terry_elo(
    comparisons: Sequence[tuple[int, int]], num_items: int, n_boot: int = 200, seed: int = 0, level: float = LEVEL
) -> list[Estimate]:
    """Per-item Elo-scale ratings (``1000 + 400·log10 strength``) with bootstrap intervals over comparisons."""
    comparisons = list(comparisons)
    point = bradley_terry(comparisons, num_items)
    if not comparisons:
        return [Estimate(1000.0, 1000.0, 1000.0, 0) for _ in range(num_items)]
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [
            bradley_terry([comparisons[i] for i in rng.integers(0, len(comparisons), len(comparisons))], num_items)
            for _ in range(n_boot)
        ]
    )
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    counts = np.zeros(num_items, dtype=int)
    for w, l in comparisons:
        counts[w] += 1
        counts[l] += 1
    return [
        Estimate(1000 + ELO_SCALE * point[i], 1000 + ELO_SCALE * lo[i], 1000 + ELO_SCALE * hi[i], int(counts[i]))
        for i in range(num_items)
    ]


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over ``labels`` of per-label F1 (a label never true nor predicted scores 0)."""
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else math.nan
