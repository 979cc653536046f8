"""Paired contrasts between arms (charlit.sweeps.contrasts), against hand-computed t intervals."""

import math

import pytest

from charlit.sweeps.contrasts import markdown, paired_contrasts, paired_difference

OOD = "eval/ood/likelihood_gated_range"
PPL = "eval/capability/perplexity"


def _job(arm, persona, seed, **figures):
    return {"arm": arm, "persona": persona, "seed": seed, "eval": {"suites": {}}, "row": figures}


def test_paired_difference_is_a_t_interval_over_cells():
    # differences 0.1, 0.3, 0.2, 0.2: mean 0.2, sd sqrt(0.02 / 3), t(0.975, 3) = 3.182446 (published table)
    estimate = paired_difference([0.1, 0.3, 0.2, 0.2])
    half = 3.182446 * math.sqrt(0.02 / 3) / 2
    assert estimate["mean"] == pytest.approx(0.2)
    assert (estimate["lo"], estimate["hi"]) == pytest.approx((0.2 - half, 0.2 + half), rel=1e-6)
    assert (estimate["above"], estimate["cells"]) == (4, 4)


def test_one_cell_gives_a_difference_without_an_interval():
    estimate = paired_difference([-0.5])
    assert estimate["mean"] == -0.5 and math.isnan(estimate["lo"]) and estimate["above"] == 0


def test_arms_are_matched_on_persona_and_seed_and_the_persona_offset_cancels():
    # the reference scores 0.1 on pirate and 0.9 on stoic; the arm is 0.2 above it in every cell
    jobs = [
        _job("self_distill", "pirate", 0, **{OOD: 0.1, PPL: 20.0}),
        _job("self_distill", "stoic", 0, **{OOD: 0.9, PPL: 20.0}),
        _job("self_distill", "stoic", 1, **{OOD: 0.9, PPL: 20.0}),
        _job("dpo", "pirate", 0, **{OOD: 0.3, PPL: 23.0}),
        _job("dpo", "stoic", 0, **{OOD: 1.1, PPL: 25.0}),
        _job("dpo", "warm", 0, **{OOD: 5.0, PPL: 99.0}),  # no reference cell: left out
        {**_job("dpo", "stoic", 1, **{OOD: 9.0}), "eval": None},  # not evaluated: left out
    ]
    (row,) = paired_contrasts(jobs)
    assert row["arm"] == "dpo" and row["reference"] == "self_distill"
    ood = row["OOD gated range"]
    assert (ood["mean"], ood["lo"], ood["hi"], ood["cells"]) == pytest.approx((0.2, 0.2, 0.2, 2))
    assert row["perplexity"]["mean"] == pytest.approx(4.0) and row["perplexity"]["above"] == 2
    assert row["KL to base"] is None  # neither arm has the figure
    text = markdown([row])
    assert text.startswith("| arm − self_distill | OOD gated range |")
    assert "| dpo | +0.20 [+0.20, +0.20] (2/2) |" in text


def test_no_reference_arm_means_no_contrasts():
    assert paired_contrasts([_job("dpo", "pirate", 0, **{OOD: 0.3})]) == []
    assert markdown([]) == ""
