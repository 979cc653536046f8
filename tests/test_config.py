import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from charlit.config import rewrite_persona_path
from tests.conftest import compose


def test_default_composition_is_self_distill_on_bundled_model():
    cfg = compose()
    assert cfg.method.name == "self_distill"
    assert cfg.teacher.name == "self"
    assert cfg.data.kind == "prompts"
    assert cfg.model.name_or_path == "bundled:smollm2-135m-instruct"
    assert cfg.persona.name == "pirate"
    assert cfg.logger.name == "wandb" and cfg.logger.project == "charlit"


def test_sft_selects_conversation_data_unless_overridden():
    assert compose(["method=sft"]).data.kind == "conversations"
    assert compose(["method=sft", "data=prompts"]).data.kind == "prompts"


def test_trainer_and_model_overrides():
    cfg = compose(["trainer.max_steps=3", "model=tiny", "model.lora.r=8", "persona=stoic"])
    assert cfg.trainer.max_steps == 3 and cfg.model.lora.r == 8 and cfg.persona.name == "stoic"


def test_unknown_method_lists_choices():
    with pytest.raises(MissingConfigException) as err:
        compose(["method=nope"])
    assert "method/nope" in str(err.value) and "self_distill" in str(err.value.options)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.not_a_key=1"])
    assert "not_a_key" in str(err.value.__cause__ or err.value)


def test_persona_path_rewrite(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntraits: [{trait: I am me., questions: [Who?]}]\n")
    assert rewrite_persona_path([f"persona={path}", "x=1"]) == ["persona=file", f"persona.path={path}", "x=1"]
    cfg = compose([f"persona={path}"])
    assert cfg.persona.path == str(path)
