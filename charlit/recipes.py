"""Multi-stage training recipes (the ``recipe`` config group, ``conf/recipe/``): ``recipe.stages`` lists stages,
each a full training run.

``recipe=pairs_introspection`` is OCT's recipe: DPO on generated pairs, then SFT on introspection data that
the DPO-trained model writes (with the constitution in context), starting from that model. Each stage's
config is composed like ``train.py <the user's overrides> <the stage's overrides>`` with no recipe; the user's
``data``, ``method`` and ``recipe`` overrides are left out (each stage sets its own data and method), and a stage
with ``from_previous: true`` loads and generates with the previous stage's ``final/`` checkpoint. ``recipe.json``
lists the stages' results and their summed compute (``compute``: see :mod:`charlit.compute`), data generation
included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.compute import sum_compute
from charlit.run import train

_NOT_PASSED_ON = ("data", "method", "recipe")


def is_recipe(cfg: DictConfig) -> bool:
    return cfg.get("recipe") is not None


def _user_overrides() -> list[str]:
    out = []
    for override in HydraConfig.get().overrides.task:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] not in _NOT_PASSED_ON:
            out.append(override)
    return out


def stage_overrides(stage, user: list[str], previous_final: str | None, base: str | None = None) -> list[str]:
    """The stage's overrides; a stage that starts from the previous one's ``final/`` is still evaluated against the
    recipe's own base model ``base`` (``eval.base_model``), so a recipe's figures compare with one-stage runs'."""
    overrides = [*user, *stage.overrides, "~recipe"]  # a stage is a plain training run (even under +arm=oct)
    if stage.get("from_previous"):
        if previous_final is None:
            raise ValueError(
                f"Recipe stage {stage.name!r} has from_previous=true but no earlier stage saved a "
                f"final/ checkpoint; keep output.save_final=true or set from_previous=false."
            )
        if base is not None:
            overrides.append(f"++eval.base_model={quoted(base)}")
        overrides.append(f"model.name_or_path={quoted(previous_final)}")
    return overrides


def quoted(value: str) -> str:
    """``value`` as one quoted Hydra override value: a sweep job's run dir holds ``=``, ``,`` and ``[`` (its
    directory is named after its overrides), which unquoted would not parse."""
    # Hydra's quoted strings: a quote is escaped, and so are the backslashes right before a quote or the end
    return "'" + re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value) + "'"


def run_recipe(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Run every stage in order under ``run_dir/<i>_<stage name>/``; writes ``recipe.json`` with their results."""
    name = cfg.recipe.name
    stages = list(cfg.recipe.get("stages") or [])
    if not stages:
        raise ValueError(f"recipe={name} has no stages; list them under recipe.stages.")
    user = _user_overrides()
    summaries, previous_final = [], None
    for i, stage in enumerate(stages):
        overrides = stage_overrides(stage, user, previous_final, base=str(cfg.model.name_or_path))
        print(f"[charlit] recipe {name}: stage {i + 1}/{len(stages)} {stage.name}: {' '.join(overrides)}", flush=True)
        stage_cfg = compose(config_name="train", overrides=overrides)
        summary = train(stage_cfg, run_dir / f"{i}_{stage.name}", reuse_finished=True)
        summaries.append(summary)
        previous_final = summary["paths"]["final"]
    (run_dir / "recipe.json").write_text(
        json.dumps(
            {
                "recipe": name,
                "compute": sum_compute({s.name: x.get("compute", {}) for s, x in zip(stages, summaries)}),
                "stages": [
                    {
                        "name": s.name,
                        "run_dir": x["paths"]["run_dir"],
                        "data": x["data"],
                        "method": x["method"],
                        "metrics": x["metrics"],
                        "compute": x.get("compute"),
                    }
                    for s, x in zip(stages, summaries)
                ],
            },
            indent=2,
            default=str,
        )
    )
    return summaries
