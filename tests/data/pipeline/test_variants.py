"""The data variants compose as documented and say whether the pipeline makes them."""

import pytest

from charlit.data.pipeline import needs_generation
from tests.conftest import compose


@pytest.mark.parametrize(
    "overrides, kind, stages",
    [
        (["method=dpo"], "pairs", ["pairs"]),
        (["method=sft", "data=reflection"], "conversations", ["reflection"]),
        (["method=sft", "data=interaction"], "conversations", ["interaction"]),
        (["method=sft", "data=introspection"], "conversations", ["reflection", "interaction"]),
    ],
)
def test_generated_variants(overrides, kind, stages):
    data = compose(overrides).data
    assert data.kind == kind and list(data.generate.stages) == stages and needs_generation(data)


def test_introspection_carries_both_stage_settings():
    gen = compose(["data=introspection"]).data.generate
    assert (
        gen.reflection.per_type == 2
        and gen.interaction.turns == 4
        and list(gen.interaction.openings) == ["free", "leading"]
    )


def test_given_paths_and_plain_variants_are_not_generated():
    assert not needs_generation(compose(["method=dpo", "data.path=bundled"]).data)
    assert not needs_generation(compose(["data=prompts"]).data)
    assert not needs_generation(compose(["method=sft"]).data)  # bundled conversations


def test_pairs_introspection_is_a_dpo_then_sft_recipe():
    from charlit.recipes import is_recipe

    cfg = compose(["recipe=pairs_introspection"])
    assert is_recipe(cfg) and not is_recipe(compose([])) and cfg.data.kind == "prompts"  # data stays data
    recipe = cfg.recipe
    assert [list(s.overrides) for s in recipe.stages] == [
        ["method=dpo", "data=pairs"],
        ["method=sft", "data=introspection"],
    ]
    assert [s.from_previous for s in recipe.stages] == [False, True]


def test_generate_config_composes_train_with_no_logger():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from charlit.config import register_configs
    from tests.conftest import REPO

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="generate", overrides=["data=pairs"])
    assert cfg.logger.name == "none" and cfg.generation.chunk_size == 8 and cfg.data.name == "pairs"


def test_prepare_data_returns_the_dataset_and_leaves_the_config_alone(tmp_path, pirate, tokenizer):
    from charlit.data.modules import build_datamodule
    from charlit.data.pipeline import prepare_data

    cfg = compose(
        [
            "method=sft",
            "data=reflection",
            "model=tiny",
            "generation.max_new_tokens=4",
            "generation.filters.unfinished=keep",
            "generation.filters.min_tokens=1",
            "data.generate.reflection.types=[diary,values]",
            "data.generate.reflection.per_type=1",
            f"generation.cache_dir={tmp_path}",
        ]
    )
    dataset = prepare_data(cfg)
    assert dataset.path.is_file() and dataset.card["rows"] == 2
    assert cfg.data.path is None  # cfg.data stays what the user composed
    module = build_datamodule(cfg.data, pirate, tokenizer, "conversations", dataset_path=dataset.path)
    assert len(module.items) == 2  # the data module reads the generated rows
    given = compose(["method=sft", "data=reflection", f"data.path={dataset.path}"])
    assert prepare_data(given) is None  # a given path is used as is


def test_stages_are_looked_up_in_the_stage_registry(tmp_path):
    from charlit.data.pipeline import generate_dataset
    from charlit.data.pipeline.stage import STAGES

    assert STAGES.builtin_names() == ["interaction", "pairs", "reflection"]
    cfg = compose(
        [
            "method=sft",
            "data=reflection",
            "model=tiny",
            "data.generate.stages=[reflection,diaries]",
            f"generation.cache_dir={tmp_path}",
        ]
    )
    with pytest.raises(
        ValueError,
        match=r"data.generate.stages='diaries' is not a registered data stage; "
        r"valid choices: interaction, pairs, reflection",
    ):
        generate_dataset(cfg)
