"""The documented commands: generate.py prints the dataset path; train.py generates what it trains on,
including the two-stage recipe=pairs_introspection."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.data.pipeline.helpers import FAST

TRAIN_FAST = ["trainer.max_steps=2", "logger=csv", "val.every_n_steps=0"]


def _run(script, *args):
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_generate_prints_the_dataset_path(tmp_path):
    proc = _run(
        "generate.py",
        "data=pairs",
        "persona=stoic",
        *FAST,
        "data.generate.prompts.num=4",
        f"generation.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    path = proc.stdout.strip().splitlines()[-1]
    assert path.startswith(str(tmp_path / "cache" / "pairs" / "stoic-")) and path.endswith("data.jsonl")
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 4 and "[charlit] pairs: generated 4, kept 4" in proc.stdout


def test_generate_refuses_a_variant_that_is_not_generated(tmp_path):
    proc = subprocess.run(
        [sys.executable, "generate.py", "data=prompts", "model=tiny", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "data=prompts is not generated" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # two training stages and their data, ~25 s: `make test-slow`
def test_pairs_introspection_recipe_runs_dpo_then_sft_on_data_from_the_dpo_model(tmp_path):
    cache = tmp_path / "cache"
    _run(
        "train.py",
        "recipe=pairs_introspection",
        *FAST,
        *TRAIN_FAST,
        f"generation.cache_dir={cache}",
        'recipe.stages.0.overrides=["method=dpo","data=pairs","data.generate.prompts.num=8"]',
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert [(s["name"], s["method"], s["data"]) for s in recipe["stages"]] == [
        ("dpo", "dpo", "pairs"),
        ("sft", "sft", "introspection"),
    ]
    dpo = json.loads((tmp_path / "run" / "0_dpo" / "summary.json").read_text())
    sft = json.loads((tmp_path / "run" / "1_sft" / "summary.json").read_text())
    assert dpo["steps"] == 2 and sft["steps"] == 2
    assert len(open(dpo["paths"]["dataset"]).readlines()) == 8  # the per-stage override reached stage 1
    assert dpo["paths"]["dataset"].startswith(str(cache / "pairs"))
    assert sft["paths"]["dataset"].startswith(str(cache / "introspection"))
    assert dpo["config"]["data"]["path"] is None and "recipe" not in sft["config"]  # configs stay as composed
    final = dpo["paths"]["final"]
    assert sft["model"] == final  # SFT starts from the DPO-trained model ...
    reflection_card = json.loads(next((cache / "reflection").glob("*/card.json")).read_text())
    assert reflection_card["settings"]["generators"][0]["name"] == final  # ... which wrote the introspection data


def test_vllm_sampler_needs_vllm_and_fixed_weights():
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    from charlit.models.tiny import tiny_model
    from charlit.sampling import build_sampler
    from charlit.sampling.vllm import model_directory

    with pytest.raises(ImportError, match="sampler=vllm needs vLLM.*sampler=hf"):
        build_sampler(OmegaConf.create({"name": "vllm"}), None)
    model = tiny_model(100, hidden_size=16, num_layers=1)
    with pytest.raises(ValueError, match="only serves fixed weights"):
        model_directory(model)
    with pytest.raises(ValueError, match="needs a model saved on disk"):
        model_directory(model.requires_grad_(False))
