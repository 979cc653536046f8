"""The share of the bare→prompted range a system covers, and its paired bootstrap interval."""

import pytest

from charlit.eval.suites.base import SuiteResult, put_ranges, range_covered


def test_range_is_the_share_of_the_gap_between_the_means():
    # means: system 1.5, bare 0, prompted 2 -> 0.75 of the range
    estimate = range_covered([1.0, 2.0, 1.5], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0])
    assert estimate.mean == pytest.approx(0.75) and estimate.n == 3
    assert estimate.lo <= estimate.mean <= estimate.hi


def test_the_bootstrap_is_paired_over_prompts():
    # per prompt the system sits exactly halfway between bare and prompted, although prompts differ a lot: every
    # paired resample gives 0.5; resampling the systems independently would not
    bare = [-3.0, 0.0, 4.0, 10.0, -7.0]
    prompted = [b + g for b, g in zip(bare, [1.0, 2.0, 0.5, 3.0, 1.5])]
    system = [(b + p) / 2 for b, p in zip(bare, prompted)]
    estimate = range_covered(system, bare, prompted)
    assert (estimate.mean, estimate.lo, estimate.hi) == pytest.approx((0.5, 0.5, 0.5))


def test_unaligned_scores_are_refused():
    with pytest.raises(ValueError, match="one score per prompt"):
        range_covered([1.0], [0.0, 1.0], [2.0, 2.0])


def test_put_ranges_reports_raw_and_gated_ranges_for_the_model_only():
    values = {
        "bare": {"likelihood": [0.0, 0.0], "likelihood_gated": [0.0, 0.0], "looping": [False, True]},
        "prompted": {"likelihood": [1.0, 1.0], "likelihood_gated": [1.0, 0.0], "looping": [False, False]},
        "model": {"likelihood": [1.0, 0.0], "likelihood_gated": [0.0, 0.0], "looping": [True, True]},
    }
    result = SuiteResult()
    put_ranges(result, values, "bare", "suffix_")
    assert set(result.metrics) == {"suffix_likelihood_range", "suffix_likelihood_gated_range"}
    assert set(result.metrics["suffix_likelihood_range"]) == {"model"}
    assert result.metrics["suffix_likelihood_range"]["model"].mean == pytest.approx(0.5)
    assert result.metrics["suffix_likelihood_gated_range"]["model"].mean == pytest.approx(0.0)
    put_ranges(empty := SuiteResult(), {"bare": values["bare"], "model": values["model"]}, "bare")
    assert empty.metrics == {}  # no prompted base, no range


def test_put_ranges_keeps_every_systems_per_prompt_values_for_pooling_runs():
    values = {
        "bare": {"likelihood": [0.0, 0.5], "likelihood_gated": [0.0, 0.5], "looping": [False, True]},
        "prompted": {"likelihood": [1.0, 2.0], "likelihood_gated": [1.0, 0.5], "looping": [False, False]},
        "model": {"likelihood": [1.0, 0.0], "likelihood_gated": [0.0, 0.0], "looping": [True, False]},
    }
    result = SuiteResult()
    put_ranges(result, values, "bare", "suffix_")
    assert set(result.per_prompt) == {"suffix_likelihood", "suffix_likelihood_gated", "suffix_looping"}
    assert result.per_prompt["suffix_likelihood"] == {"bare": [0.0, 0.5], "prompted": [1.0, 2.0], "model": [1.0, 0.0]}
    assert result.per_prompt["suffix_looping"]["bare"] == [0.0, 1.0]
