"""Intervals and Bradley-Terry against hand-computed / closed-form values."""

import math

import numpy as np
import pytest

from charlit.eval.stats import bootstrap_ci, bradley_terry, bradley_terry_elo, macro_f1, mean_ci, wilson


def test_mean_ci_is_the_student_t_interval():
    est = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.7764451
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert est.n == 5 and est.mean == pytest.approx(3.0)
    assert (est.lo, est.hi) == pytest.approx((3 - half, 3 + half), abs=1e-6)


def test_mean_ci_degenerate_cases():
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    one = mean_ci([0.7])
    assert (one.mean, one.lo, one.hi, one.n) == (0.7, 0.7, 0.7, 1)


def test_wilson_matches_the_textbook_value():
    est = wilson(8, 10)  # Wilson 95% for 8/10: [0.4902, 0.9433]
    assert est.mean == pytest.approx(0.8)
    assert (est.lo, est.hi) == pytest.approx((0.49016, 0.94331), abs=1e-4)
    zero = wilson(0, 20)
    assert zero.lo == pytest.approx(0.0, abs=1e-12) and zero.hi == pytest.approx(0.16113, abs=1e-4)
    for n in range(1, 60):  # the bounds contain the estimate exactly at 0 and 1 (rounding must not invert them)
        assert all(e.lo <= e.mean <= e.hi for e in (wilson(0, n), wilson(n, n)))


def test_bootstrap_is_exact_on_constant_data_and_brackets_the_mean():
    const = bootstrap_ci([2.0] * 10, lambda xs: float(np.mean(xs)))
    assert (const.mean, const.lo, const.hi) == (2.0, 2.0, 2.0)
    data = list(np.random.default_rng(0).normal(1.0, 1.0, 200))
    est = bootstrap_ci(data, lambda xs: float(np.mean(xs)), n_boot=500, seed=1)
    t = mean_ci(data)
    assert est.lo < est.mean < est.hi
    assert est.lo == pytest.approx(t.lo, abs=0.05) and est.hi == pytest.approx(t.hi, abs=0.05)


def test_bradley_terry_two_items_is_the_log_odds():
    comps = [(0, 1)] * 6 + [(1, 0)] * 2
    theta = bradley_terry(comps, 2, prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(6 / 2), abs=1e-6)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)


def test_bradley_terry_recovers_a_consistent_three_item_order():
    # strengths 4 : 2 : 1 -> expected wins in 70 games per pair, rounded from p = s_i / (s_i + s_j)
    strengths = [4.0, 2.0, 1.0]
    comps = []
    for i in range(3):
        for j in range(i + 1, 3):
            wins = round(70 * strengths[i] / (strengths[i] + strengths[j]))
            comps += [(i, j)] * wins + [(j, i)] * (70 - wins)
    theta = bradley_terry(comps, 3, prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(2), abs=0.02)
    assert theta[1] - theta[2] == pytest.approx(math.log(2), abs=0.02)


def test_bradley_terry_elo_intervals_cover_the_point_and_an_unbeaten_item_stays_finite():
    comps = [(0, 1)] * 10 + [(1, 2)] * 5 + [(2, 1)] * 5
    elo = bradley_terry_elo(comps, 3, n_boot=100)
    assert all(math.isfinite(e.mean) and e.lo <= e.mean + 1e-6 and e.mean <= e.hi + 1e-6 for e in elo)
    assert elo[0].mean > elo[1].mean and elo[0].n == 10 and elo[2].n == 10


def test_macro_f1_by_hand():
    truth = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    # a: tp1 fp1 fn1 -> 0.5 ; b: tp2 fp1 fn0 -> 0.8 ; c: 0
    assert macro_f1(truth, pred, ["a", "b", "c"]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
