import pytest
from omegaconf import OmegaConf

from charlit.strategies import build_strategy
from tests.conftest import compose


@pytest.fixture(scope="module")
def tiny_model():
    from charlit.models import load_model

    return load_model(OmegaConf.create({"name_or_path": "tiny", "seed": 0, "tiny": {"hidden_size": 32, "num_layers": 2},
                                        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}})).model


def test_fsdp_wraps_each_decoder_layer_and_keeps_lora_params(tiny_model):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    strategy = build_strategy({"strategy": "fsdp", "fsdp": {"sharding_strategy": "SHARD_GRAD_OP"}}, tiny_model, True)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}


def test_named_strategies_pass_through_and_missing_deepspeed_is_clear(tiny_model, monkeypatch):
    import importlib.util

    assert build_strategy({"strategy": "ddp"}, tiny_model, False) == "ddp"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ValueError, match="needs DeepSpeed: `pip install deepspeed`"):
        build_strategy({"strategy": "deepspeed_stage_2"}, tiny_model, False)


@pytest.mark.parametrize("trainer,strategy", [("ddp", "ddp"), ("fsdp", "fsdp"), ("deepspeed", "deepspeed_stage_2")])
def test_scale_trainer_configs_compose(trainer, strategy):
    cfg = compose([f"trainer={trainer}"])
    assert cfg.trainer.strategy == strategy and cfg.trainer.max_steps == compose([]).trainer.max_steps
    if trainer != "ddp":
        assert cfg.trainer.precision == "bf16-mixed"


def test_slurm_launcher_composes():
    from hydra import compose as hydra_compose, initialize_config_dir

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


@pytest.mark.parametrize("arm,method,data", [("oct", "dpo", "pairs_introspection"), ("on_policy_distill", "on_policy_distill", "prompts"),
                                             ("self_distill", "self_distill", "prompts")])
def test_method_ablation_arms_compose(arm, method, data):
    cfg = compose([f"+arm={arm}"])
    assert (cfg.method.name, cfg.data.name) == (method, data)
