import pytest
from omegaconf import OmegaConf

from charlit.strategies import build_strategy


@pytest.fixture(scope="module")
def tiny_model():
    from charlit.models import load_model

    return load_model(
        OmegaConf.create(
            {
                "name_or_path": "tiny",
                "seed": 0,
                "tiny": {"hidden_size": 32, "num_layers": 2},
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            }
        )
    ).model


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
