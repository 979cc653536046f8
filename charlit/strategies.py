"""Lightning strategies from ``trainer.strategy``: a name Lightning knows (``auto``, ``ddp``, ``deepspeed_stage_2``,
...) is passed through; ``fsdp`` is built here because it needs the model: each decoder layer (the classes the
Hugging Face model lists in ``_no_split_modules``) becomes one FSDP unit, with ``use_orig_params`` so LoRA's
mix of frozen and trainable weights shards correctly, and activation checkpointing per layer when
``model.gradient_checkpointing`` is on."""

from __future__ import annotations

import importlib.util

import torch


def _decoder_layer_classes(model: torch.nn.Module) -> set[type]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    classes = {type(m) for m in base.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"trainer=fsdp cannot find the decoder layers of {type(base).__name__} (it lists no "
            f"_no_split_modules); use trainer=ddp or trainer=deepspeed for this model."
        )
    return classes


def build_strategy(trainer_cfg: dict, model: torch.nn.Module, gradient_checkpointing: bool):
    """The ``strategy`` argument for ``lightning.Trainer`` (``trainer_cfg`` is the plain ``trainer`` config)."""
    strategy = trainer_cfg.get("strategy", "auto")
    if str(strategy).startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"trainer.strategy={strategy} needs DeepSpeed: `pip install deepspeed` on a CUDA machine "
            f"(or use trainer=ddp / trainer=fsdp)."
        )
    if strategy != "fsdp":
        return strategy
    from lightning.pytorch.strategies import FSDPStrategy

    layers = _decoder_layer_classes(model)
    fsdp = dict(trainer_cfg.get("fsdp") or {})
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if gradient_checkpointing else None,
        use_orig_params=True,
        sharding_strategy=fsdp.get("sharding_strategy", "FULL_SHARD"),
        cpu_offload=bool(fsdp.get("cpu_offload", False)),
        state_dict_type="full",
    )
