"""Pooling a method study by arm (charlit.sweeps.study), against hand-computed values."""

import json

import numpy as np
import pytest

from charlit.sweeps.report import write_report
from charlit.sweeps.study import arm_label, arm_of, pareto_front, pooled_mean, pooled_range


def _systems(model, bare, prompted):
    return {"model": np.array(model, float), "bare": np.array(bare, float), "prompted": np.array(prompted, float)}


def test_pooled_range_averages_seeds_before_the_ratio_and_personas_after_it():
    # persona A: bare 0, prompted 2, seeds' model means 0.5 and 1.5 -> (1.0 - 0) / 2 = 0.5
    # persona B: bare 1, prompted 3, one seed at 2.5 -> 0.75; the arm: (0.5 + 0.75) / 2 = 0.625
    a = [_systems([0.5, 0.5], [0, 0], [2, 2]), _systems([1.5, 1.5], [0, 0], [2, 2])]
    b = [_systems([2.0, 3.0], [1, 1], [3, 3])]
    estimate = pooled_range([a, b], n_boot=500)
    assert estimate["mean"] == pytest.approx(0.625) and estimate["jobs"] == 3
    assert estimate["lo"] <= estimate["mean"] <= estimate["hi"]
    assert estimate["lo"] < 0.5 < 0.75 < estimate["hi"]  # resampling persona A's seeds moves it from 0.25 to 0.75


def test_pooled_range_is_paired_over_prompts_shared_by_the_jobs():
    # every job sits halfway between bare and prompted on every prompt, prompts differ a lot: every resample is 0.5
    bare = np.array([-3.0, 0.0, 4.0, 10.0])
    prompted = bare + np.array([1.0, 2.0, 0.5, 3.0])
    jobs = [_systems((bare + prompted) / 2, bare, prompted) for _ in range(3)]
    estimate = pooled_range([jobs], n_boot=300)
    assert (estimate["mean"], estimate["lo"], estimate["hi"]) == pytest.approx((0.5, 0.5, 0.5))


def test_pooled_range_refuses_jobs_scored_on_different_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        pooled_range([[_systems([1, 2], [0, 0], [2, 2]), _systems([1], [0], [2])]])


def test_pooled_mean_adds_the_spread_between_jobs_and_the_shared_prompt_error():
    estimate = pooled_mean([1.0, 3.0], [0.2, 0.4])
    # t(0.975, 1 df) = 12.7062 (published table); sd of (1, 3) = sqrt(2); / sqrt(2 jobs) -> 12.7062
    assert estimate["mean"] == 2.0 and estimate["jobs"] == 2
    assert estimate["half"] == pytest.approx(np.hypot(12.7062, 0.3), rel=1e-5)
    assert pooled_mean([5.0], [None])["half"] == 0.0
    assert np.isnan(pooled_mean([], [])["mean"])


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = [(0.1, 0.5), (0.2, 0.9), (0.3, 0.4), (0.05, 0.2)]  # x lower is better, y higher is better
    assert pareto_front(points, higher_x_better=False) == [0, 1, 3]
    assert pareto_front(points, higher_x_better=True) == [1, 2]


def _stage(run_dir, method, persona, seed, flops, history, eval_values=None, capability=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"compute/flops": flops, **(capability or {})}
    summary = {
        "method": method,
        "teacher": "self",
        "data": "prompts",
        "persona": persona,
        "wall_time_s": 10.0,
        "metrics": metrics,
        "val_history": [
            {"step": i, "compute/flops": x, "val/persona_progress_gated": y} for i, (x, y) in enumerate(history)
        ],
        "config": {"seed": seed},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if eval_values is not None:
        (run_dir / "eval").mkdir()
        suites = {
            "ood": {"per_prompt": {"likelihood_gated": eval_values, "likelihood": eval_values}},
            "capability": {"metrics": {"kl_to_base": {"bare": {"mean": 0.0}, "model": {"mean": 0.1}}}},
        }
        (run_dir / "eval" / "eval.json").write_text(json.dumps({"suites": suites}))


def _job(sweep, index, arm, persona, seed):
    job = sweep / f"{index}_+arm={arm},persona={persona},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- persona={persona}\n- +arm={arm}\n")
    return job


def test_a_sweep_over_arms_writes_the_study_table_curves_and_pareto_plot(tmp_path):
    capability = {"eval/capability/kl_to_base": 0.1, "eval/capability/kl_to_base_bare": 0.0}
    index = 0
    for persona in ("pirate", "stoic"):
        for seed in (0, 1):
            values = {"model": [0.5, 1.5], "bare": [0.0, 0.0], "prompted": [2.0, 2.0]}  # range 0.5
            _stage(
                _job(tmp_path, index, "self_distill", persona, seed),
                "self_distill",
                persona,
                seed,
                30.0,
                [(0.0, 0.0), (30.0, 0.5)],
                values,
                capability,
            )
            oct_job = _job(tmp_path, index + 1, "oct", persona, seed)
            _stage(oct_job / "0_dpo", "dpo", persona, seed, 100.0, [(40.0, 0.0), (100.0, 0.3)])
            values = {"model": [2.0, 2.0], "bare": [0.0, 0.0], "prompted": [2.0, 2.0]}  # range 1
            _stage(oct_job / "1_sft", "sft", persona, seed, 20.0, [(0.0, 0.3), (20.0, 0.6)], values, capability)
            (oct_job / "recipe.json").write_text("{}")
            index += 2
    _stage(_job(tmp_path, index, "dpo", "pirate", 0), "dpo", "pirate", 0, 50.0, [(0.0, 0.0)])  # died before eval
    running = _job(tmp_path, index + 1, "oct", "pirate", 2)  # a recipe whose first stage evaluated, second to come
    _stage(
        running / "0_dpo",
        "dpo",
        "pirate",
        2,
        100.0,
        [(0.0, 0.0)],
        {"model": [9, 9], "bare": [0, 0], "prompted": [1, 1]},
    )

    result = write_report(tmp_path)
    table = {row["arm"]: row for row in result["study"]["table"]}
    assert set(table) == {"self_distill", "oct", "dpo"}
    assert table["self_distill"]["ood_gated"]["mean"] == pytest.approx(0.5)
    assert table["oct"]["ood_gated"]["mean"] == pytest.approx(1.0)
    assert table["oct"]["ood_gated"]["mean"] == pytest.approx(1.0)  # the unfinished recipe is not counted
    assert table["oct"]["flops"]["mean"] == pytest.approx(120.0)  # both stages of the finished jobs, data included
    assert (table["oct"]["jobs"], table["oct"]["evaluated"], table["dpo"]["evaluated"]) == (5, 4, 0)
    assert table["oct"]["kl_to_base"]["mean"] == pytest.approx(0.1) and table["oct"]["kl_to_base_bare"] == 0.0
    text = result["study"]["markdown"].read_text()
    assert "| oct | 4 | pirate,stoic | 120.000 ± 0.000 | 1.00 [1.00, 1.00] |" in text
    header, _, *body = text.split("\n\n")[2].splitlines()
    assert body[-1].startswith("| bare base |") and body[-1].count("|") == header.count("|")
    # one table per persona beside the pooled one; the pirate-only DPO job is in pirate's alone
    by_persona = {p: {row["arm"]: row for row in rows} for p, rows in result["study"]["by_persona"].items()}
    assert set(by_persona) == {"pirate", "stoic"} and set(by_persona["stoic"]) == {"self_distill", "oct"}
    assert by_persona["stoic"]["self_distill"]["ood_gated"]["mean"] == pytest.approx(0.5)
    assert (by_persona["pirate"]["oct"]["jobs"], by_persona["stoic"]["oct"]["jobs"]) == (3, 2)
    assert "## Persona `pirate` alone" in text and "## Persona `stoic` alone" in text
    # paired against self_distill on the four cells both ran: same KL in every cell
    (paired,) = result["study"]["paired"]
    assert paired["arm"] == "oct" and paired["KL to base"]["mean"] == pytest.approx(0.0)
    assert paired["KL to base"]["cells"] == 4 and "## Paired against `self_distill`" in text
    assert "study.md" in result["markdown"].read_text()
    assert {p.name for p in result["study"]["plots"]} == {"study_curves.png", "study_pareto.png"}
    assert all(p.stat().st_size > 1000 for p in result["study"]["plots"])


def test_a_sweep_without_arms_writes_no_study(tmp_path):
    _stage(tmp_path / "0_method=sft", "sft", "pirate", 0, 10.0, [(0.0, 0.0)])
    assert write_report(tmp_path)["study"] is None


def test_arm_overrides_above_the_sweep_dir_are_not_read(tmp_path):
    outer = _job(tmp_path, 0, "oct", "pirate", 0)
    inner = outer / "sweep" / "0_job"
    inner.mkdir(parents=True)
    assert arm_of(inner, outer / "sweep") is None
    assert arm_of(inner, tmp_path) == ("oct", outer)


def test_a_data_or_teacher_override_makes_a_variant_of_the_arm():
    assert arm_label(["seed=0", "+arm=self_distill", "persona=pirate"]) == "self_distill"
    assert arm_label(["+arm=self_distill", "data=robust", "eval.suite.pressure=0"]) == "self_distill data=robust"
    assert arm_label(["teacher=amplified", "+arm=distill", "data=teacher_replies"]) == (
        "distill data=teacher_replies teacher=amplified"
    )
    assert arm_label(["method=sft", "data=robust"]) is None
