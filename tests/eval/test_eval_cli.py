"""End to end on the tiny model: `python eval.py` writes eval.json / eval.md / plots with the three-way
comparison for every suite; run dirs supply base model and persona; bad input is one line; the train hook."""

import json
import subprocess
import sys

import pytest

from charlit.eval.judges.llm import SKIPPED
from tests.conftest import REPO

SMALL = [
    "suite=quick",
    "suite.id_prompts=2",
    "suite.ood_prompts=2",
    "suite.format_shift_prompts=2",
    "suite.conversations=2",
    "suite.turns=2",
    "suite.attacks=2",
    "suite.attack_prompts=1",
    "suite.prefill=2",
    "suite.pressure=2",
    "suite.buried=2",
    "suite.neutral_prompts=2",
    "suite.neutral_paragraphs=2",
    "suite.multiple_choice=4",
    "suite.max_new_tokens=6",
    "logger=none",
]


def _eval(tmp_path, *overrides, ok=True):
    cmd = [
        sys.executable,
        "eval.py",
        *SMALL,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # ~95 s: every quick suite three ways; the other CLI tests here stay in the default run
def test_base_model_eval_reports_every_suite_three_ways(tmp_path):
    _eval(tmp_path, "model=tiny", "persona=pirate")
    out = tmp_path / "out"
    report = json.loads((out / "eval.json").read_text())
    assert report["labels"] == ["model", "bare", "prompted"]
    suites = report["suites"]
    assert list(suites) == [
        "persona_id",
        "ood",
        "format_shift",
        "multiturn",
        "robustness",
        "revealed_preferences",
        "coherence",
        "capability",
        "persona_id_greedy",
        "ood_greedy",
        "robustness_greedy",
    ]
    assert report["decodings"]["greedy"]["temperature"] == 0.0
    assert suites["revealed_preferences"] == {"status": SKIPPED, "metrics": {}, "series": {}, "samples": []}
    assert suites["coherence"]["status"] == SKIPPED
    for name in ("persona_id", "ood", "format_shift", "multiturn", "robustness", "capability", "ood_greedy"):
        assert suites[name]["status"] == "ok" and suites[name]["metrics"], name
        for metric, per_label in suites[name]["metrics"].items():
            assert set(per_label) == {"model", "bare", "prompted"}, (name, metric)
            for est in per_label.values():
                assert set(est) == {"mean", "lo", "hi", "n"} and est["n"] > 0 and est["lo"] <= est["mean"] <= est["hi"]
            assert per_label["model"] == per_label["bare"]  # the untrained baseline is the bare base
    for metric in (
        "likelihood",
        "classifier",
        "classifier_hit",
        "likelihood_gated",
        "classifier_hit_gated",
        "looping",
        "coherent",
        "ended",
        "distinct_2",
        "compression",
        "fluency",
    ):
        assert metric in suites["persona_id"]["metrics"] and metric in suites["ood_greedy"]["metrics"], metric
    assert {"suffix_likelihood", "prefill_likelihood", "pressure_likelihood", "buried_likelihood"} <= set(
        suites["robustness"]["metrics"]
    )
    assert not [m for body in suites.values() for m in body["metrics"] if m.endswith("_range")]  # the model is bare
    assert {"kl_to_base", "perplexity", "mc_accuracy"} == set(suites["capability"]["metrics"])
    assert suites["capability"]["metrics"]["kl_to_base"]["bare"]["mean"] == 0.0
    assert suites["capability"]["metrics"]["kl_to_base"]["prompted"]["mean"] > 0.0
    assert len(suites["multiturn"]["series"]["likelihood"]["prompted"]) == 2
    table = (out / "eval.md").read_text()
    assert "revealed_preferences | skipped: no LLM judge configured" in table and "| persona_id | likelihood |" in table
    assert (out / "plots" / "persona_id.png").stat().st_size > 0
    assert (out / "plots" / "multiturn_likelihood_per_turn.png").is_file()
    # a second run reuses every sampled reply
    _eval(tmp_path, "model=tiny", "persona=pirate", "hydra.run.dir=" + str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["generation_cache"]["misses"] == 0 and again["generation_cache"]["hits"] > 0
    assert again["suites"]["persona_id"]["metrics"] == suites["persona_id"]["metrics"]


def _run_dir(tmp_path, persona="stoic"):
    from omegaconf import OmegaConf

    from charlit.models import load_model

    run = tmp_path / "run"
    loaded = load_model(OmegaConf.create({"name_or_path": "tiny", "seed": 5}))
    loaded.model.save_pretrained(run / "final")
    loaded.tokenizer.save_pretrained(run / "final")
    config = {
        "model": {"name_or_path": "tiny", "seed": 0, "dtype": "float32", "lora": {"r": 0}},
        "persona": {"name": persona, "path": None},
    }
    (run / "summary.json").write_text(json.dumps({"config": config}))
    return run


@pytest.mark.slow  # ~55 s: a tiny training run, then three evaluations (make test-slow)
def test_run_dir_supplies_base_and_persona_and_compare_adds_a_column(tmp_path):
    run = _run_dir(tmp_path)
    _eval(tmp_path, f"ckpt={run}", f"compare={run / 'final'}", "judges=[likelihood]", "greedy=false")
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["persona"] == "stoic"
    assert report["labels"] == ["model", "bare", "prompted", "compare"]
    assert report["systems"]["model"] == str(run / "final")
    gains = report["suites"]["persona_id"]["metrics"]["likelihood"]
    assert gains["model"] == gains["compare"] and gains["model"] != gains["bare"]
    ranges = report["suites"]["persona_id"]["metrics"]["likelihood_range"]  # bases have none: they are its ends
    assert set(ranges) == {"model", "compare"} and ranges["model"] == ranges["compare"]
    share = (gains["model"]["mean"] - gains["bare"]["mean"]) / (gains["prompted"]["mean"] - gains["bare"]["mean"])
    assert ranges["model"]["mean"] == pytest.approx(share)
    assert "suffix_likelihood_gated_range" in report["suites"]["robustness"]["metrics"]
    assert report["suites"]["capability"]["metrics"]["kl_to_base"]["model"]["mean"] > 0


def test_bad_checkpoint_and_missing_persona_are_one_clear_line(tmp_path):
    proc = _eval(tmp_path, "model=tiny", f"ckpt={tmp_path / 'nowhere'}", "persona=pirate", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"ckpt='{tmp_path / 'nowhere'}' is neither a run dir" in proc.stderr
    proc = _eval(tmp_path, "model=tiny", ok=False)
    assert proc.returncode == 2 and "No persona given: add persona=<name>" in proc.stderr


@pytest.mark.slow  # ~20 s: a tiny training run followed by its evaluation (make test-slow)
def test_train_hook_adds_eval_numbers_to_the_summary(tmp_path):
    small = [f"eval.{o}" for o in SMALL if o.startswith("suite.")]
    cmd = [
        sys.executable,
        "train.py",
        "method=sft",
        "persona=poet",
        "model=tiny",
        "trainer.max_steps=1",
        "logger=csv",
        "val.every_n_steps=0",
        "eval=quick",
        "eval.judges=[likelihood]",
        "eval.greedy=false",
        f"eval.cache_dir={tmp_path / 'cache'}",
        "eval.suite.suites=[persona_id,revealed_preferences,capability]",
        *small,
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for key in (
        "eval/persona_id/likelihood",
        "eval/persona_id/likelihood_bare",
        "eval/persona_id/likelihood_prompted",
        "eval/capability/mc_accuracy",
        "eval/capability/kl_to_base",
    ):
        assert key in metrics, key
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["persona"] == "poet" and report["suites"]["revealed_preferences"]["status"] == SKIPPED


def test_a_run_dirs_summary_cannot_turn_on_remote_code(tmp_path):
    from omegaconf import OmegaConf

    from charlit.eval.cli import Checkpoint, base_model_cfg

    summary = {"config": {"model": {"name_or_path": str(tmp_path / "evil"), "trust_remote_code": True}}}
    ckpt = Checkpoint(tmp_path / "final", summary)
    mine = OmegaConf.create({"model": {"name_or_path": "tiny", "trust_remote_code": False}})
    model = base_model_cfg(mine, ckpt)
    assert model.name_or_path == str(tmp_path / "evil") and model.trust_remote_code is False
    mine.model.trust_remote_code = True  # only the user's own flag for this invocation opts in
    assert base_model_cfg(mine, ckpt).trust_remote_code is True


def test_a_later_recipe_stage_is_evaluated_against_the_recipes_own_base(tmp_path, monkeypatch):
    """``eval.base_model`` (set by a recipe for stages that start from the previous one) replaces the base the
    train hook loads; without it the base is ``model``."""
    from omegaconf import OmegaConf

    from charlit.eval import train_hook

    loaded, named = [], []
    monkeypatch.setattr(train_hook, "load_model", lambda cfg, **_: loaded.append(cfg.name_or_path) or _Loaded())
    monkeypatch.setattr(train_hook, "evaluate", lambda *a, base_name, **k: named.append(base_name) or {"suites": {}})
    monkeypatch.setattr(train_hook, "write_outputs", lambda *a: None)
    model = {"name_or_path": "runs/0_dpo/final", "dtype": "float32"}
    for eval_cfg, expected in (
        ({"base_model": "bundled:smollm2-135m-instruct"}, "bundled:smollm2-135m-instruct"),
        ({}, "runs/0_dpo/final"),
    ):
        cfg = OmegaConf.create({"model": model, "eval": eval_cfg})
        train_hook.evaluate_final(cfg, None, None, None, tmp_path)
        assert loaded[-1] == expected and named[-1] == expected


class _Loaded:
    model = None
